{{ config(enabled=nudge_is_event_source('rudderstack')) }}

{{ nudge_loader_tracks('rudderstack') }}
