{{ config(
    materialized='incremental',
    unique_key='event_id',
    incremental_strategy='delete+insert',
    on_schema_change='fail'
) }}

-- Every event ever loaded, once, with the contact its anonymous id was first identified
-- as (int_identity_map), whenever that was: int_events applies the run's clock on top, so
-- this table grows by what arrives instead of being rebuilt every hour. A build reads the
-- events loaded since the last one, and again every event of an anonymous id a new event
-- links (a late identify may link it earlier, or to its first contact).

with

identity_map as (

    select * from {{ ref('int_identity_map') }}

),

{% if is_incremental() %}

{#- `>`, not `>=`: each load has its own instant (the ingest's clock, or the loader's), and
    the last build read everything up to its newest. `>=` read the newest load again on
    every build, and after a bulk backfill that load is the whole history. The instant is
    written into the SQL, not joined in: a constant lets the scan skip the old row groups. -#}
{%- set loaded_until = nudge_newest_load(this) -%}

relinked as (

    -- anonymous ids a newly loaded event links: their earlier events may change hands
    select distinct anonymous_id
    from {{ ref('stg_events') }}
    where anonymous_id is not null
        and contact_id is not null
        and (loaded_at > {{ loaded_until }} or loaded_at is null)

),

changed as (

    -- stg_events is named in each branch rather than imported once: a CTE read more than
    -- once is materialized whole (DuckDB), which copied every event on every build
    select *
    from {{ ref('stg_events') }}
    where loaded_at > {{ loaded_until }} or loaded_at is null

    union all

    select *
    from {{ ref('stg_events') }}
    where loaded_at <= {{ loaded_until }}
        and anonymous_id in (select anonymous_id from relinked)

),

{% else %}

changed as (

    select * from {{ ref('stg_events') }}

),

{% endif %}

final as (

    select
        changed.event_id,
        changed.contact_id,
        changed.anonymous_id,
        changed.event_name,
        changed.occurred_at,
        changed.properties,
        changed.is_syncing,
        changed.loaded_at,
        identity_map.contact_id as stitched_contact_id,
        identity_map.identified_at

    from changed
    left join identity_map
        on changed.anonymous_id = identity_map.anonymous_id

)

select * from final
