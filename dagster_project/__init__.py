"""Nudge: warehouse-native, behavior-triggered email."""
