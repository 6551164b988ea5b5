"""Durations as analytics engineers write them in YAML: 30m, 1h, 48h, 7d, 2w."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str | int) -> timedelta:
    if isinstance(text, int) or (isinstance(text, str) and text.strip() == "0"):
        if int(text) != 0:
            raise ValueError(f"duration {text!r} needs a unit: s, m, h, d or w (e.g. 30m, 48h, 7d)")
        return timedelta(0)
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"duration {text!r} is not a number and a unit such as 30m, 1h, 48h, 7d")
    amount, unit = match.groups()
    return timedelta(**{_UNITS[unit]: int(amount)})


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
