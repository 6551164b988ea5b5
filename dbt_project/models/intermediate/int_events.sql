{{ config(materialized='view') }}

-- Every behavioral model reads events from here: one row per event that has happened
-- by as_of, attributed to a known contact.

with

events as (

    select * from {{ ref('stg_events') }}

),

final as (

    select
        event_id,
        contact_id,
        event_name,
        occurred_at,
        properties,
        is_syncing

    from events
    where contact_id is not null
        -- nothing after the run's clock has happened yet
        and occurred_at <= {{ nudge_as_of() }}

)

select * from final
