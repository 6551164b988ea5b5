{{ config(materialized='view') }}

-- Every behavioral model reads events from here: one row per event that has happened
-- by as_of, attributed to a known contact, its own or the one its anonymous id was
-- stitched to.

with

events as (

    select * from {{ ref('stg_events') }}

),

identity_map as (

    select * from {{ ref('int_identity_map') }}

),

attributed as (

    select
        events.event_id,
        -- an event's own contact_id wins: it says whose it is. Otherwise the contact its
        -- anonymous id was identified as, whenever that happened, so an install before
        -- the signup counts for the contact who signed up on that device.
        coalesce(events.contact_id, identity_map.contact_id) as contact_id,
        events.anonymous_id,
        events.event_name,
        events.occurred_at,
        events.properties,
        events.is_syncing

    from events
    left join identity_map
        on events.anonymous_id = identity_map.anonymous_id

),

final as (

    select * from attributed
    -- an anonymous id nobody has identified as yet belongs to no contact: left out
    where contact_id is not null
        -- nothing after the run's clock has happened yet
        and occurred_at <= {{ nudge_as_of() }}

)

select * from final
