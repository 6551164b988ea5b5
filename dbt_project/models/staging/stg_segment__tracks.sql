{{ config(enabled=nudge_is_event_source('segment')) }}

{{ nudge_loader_tracks('segment') }}
