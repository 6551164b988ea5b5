{{ config(materialized='view') }}

-- Every behavioral model reads events from here: one row per event that has happened
-- by as_of, attributed to a known contact, its own or the one its anonymous id was
-- stitched to by as_of. The work is done once per event in int_events_stitched; the
-- clock is applied here, so a replay of an earlier hour sees that hour's answer.

with

stitched as (

    select * from {{ ref('int_events_stitched') }}

),

attributed as (

    select
        event_id,
        -- an event's own contact_id wins: it says whose it is. Otherwise the contact its
        -- anonymous id was identified as, if that had happened by as_of, so an install
        -- before the signup counts for the contact who signed up on that device.
        coalesce(
            contact_id,
            case when identified_at <= {{ nudge_as_of() }} then stitched_contact_id end
        ) as contact_id,
        anonymous_id,
        event_name,
        occurred_at,
        properties,
        is_syncing

    from stitched

),

final as (

    select * from attributed
    -- an anonymous id nobody has identified as yet belongs to no contact: left out
    where contact_id is not null
        -- nothing after the run's clock has happened yet
        and occurred_at <= {{ nudge_as_of() }}

)

select * from final
