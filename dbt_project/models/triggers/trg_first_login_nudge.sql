with

events as (

    select * from {{ ref('int_events') }}

),

first_moments as (

    select
        contact_id,
        event_id,
        event_name,
        occurred_at,
        properties,
        is_syncing,
        -- the first of signing up and installing the app (an install before signup is
        -- stitched to the contact by int_events) starts the 24 hours
        row_number() over (
            partition by contact_id
            order by occurred_at, event_id
        ) as moment_number

    from events
    -- imported history counts here: a contact whose first moment is history is not new,
    -- and a later live signup or install does not make them new again
    where event_name in ('signed_up', 'app_installed')

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
    where moment_number = 1
        and not is_syncing

),

final as (

    select
        {{ nudge_trigger_columns() }}

    from qualifications
    where qualified_at <= {{ nudge_as_of() }}

)

select * from final
