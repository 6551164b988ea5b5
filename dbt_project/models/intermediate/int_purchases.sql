{{ nudge_per_contact_model(events=['purchased']) }}

-- A contact's purchases are theirs alone: each tick rebuilds the contacts with something new
-- (macros/per_contact_incremental.sql). trg_post_purchase reads its orders here, not from
-- int_events, where finding them read every event of the history every hour.

with

events as (

    select * from {{ nudge_events_to_rebuild() }}

),

final as (

    select
        contact_id,
        event_id,
        occurred_at,
        properties,
        is_syncing

    -- the purchases alone: the events declared at the top
    from events

)

select * from final
