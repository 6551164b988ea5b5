{{ nudge_per_contact_model(events=['signed_up']) }}

-- A contact's first signup is theirs alone: each tick rebuilds the contacts with something new
-- (macros/per_contact_incremental.sql).

with

events as (

    select * from {{ nudge_events_to_rebuild() }}

),

first_signups as (

    -- syncing history counts here: a contact whose first signup is history has already been
    -- welcomed elsewhere, whatever they do later
    {{ nudge_first_occurrence('signed_up', events='events') }}

),

final as (

    select
        contact_id,
        event_id as signup_event_id,
        occurred_at as signed_up_at,
        properties,
        is_syncing

    from first_signups

)

select * from final
