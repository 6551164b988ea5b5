{{ nudge_per_contact_model(events=['signed_up', 'app_installed']) }}

-- Per contact (macros/per_contact_incremental.sql): a contact's first moment is their own, and
-- qualifies when it happens.

with

events as (

    select * from {{ nudge_events_to_rebuild() }}

),

first_moments as (

    -- the first of signing up and installing the app (an install before signup is stitched to
    -- the contact by int_events) starts the 24 hours. Imported history counts here: a contact
    -- whose first moment is history is not new, and a later live signup does not make them new
    {{ nudge_first_occurrence(['signed_up', 'app_installed'], events='events') }}

),

qualifications as (

    select
        contact_id,
        -- once per contact ever
        contact_id as trigger_key,
        occurred_at as qualified_at,
        -- a login within the 24 hours is an exit event (meta exit_events), recorded by the
        -- send step as a skip with reason exited, so the row stays here
        '{"first_event": ' || {{ json_string('event_name') }}
            || ', "event_id": ' || {{ json_string('event_id') }}
            || ', "properties": ' || properties
            || '}' as context

    from first_moments
    where not is_syncing

),

final as (

    select
        {{ nudge_trigger_columns() }}

    from qualifications
    where qualified_at <= {{ nudge_as_of() }}

)

select * from final
