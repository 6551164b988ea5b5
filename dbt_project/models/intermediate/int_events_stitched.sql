{{ config(
    materialized='incremental',
    unique_key='event_id',
    incremental_strategy='delete+insert',
    on_schema_change='fail'
) }}

-- Every event ever loaded, once, with the contact its anonymous id was first identified
-- as, whenever that was: int_events applies the run's clock on top, so this table can
-- grow by what arrives instead of being rebuilt every hour. A build reads the events
-- loaded since the last one, and again every event of an anonymous id a new event links
-- (a late identify may link it earlier, or to its first contact).

with

events as (

    select * from {{ ref('stg_events') }}

),

links as (

    -- any event that carries both ids links them (int_identity_map, without the clock)
    select anonymous_id, contact_id, occurred_at, event_id, loaded_at
    from events
    where anonymous_id is not null
        and contact_id is not null

),

first_links as (

    select
        anonymous_id,
        contact_id as stitched_contact_id,
        occurred_at as identified_at

    from (
        select
            *,
            row_number() over (partition by anonymous_id order by occurred_at, event_id) as link_number
        from links
    ) as numbered
    where link_number = 1

),

{% if is_incremental() %}

last_build as (

    -- `>=`, not `>`: a load that shares the last build's timestamp is read again, harmlessly
    select coalesce(max(loaded_at), cast('1900-01-01' as {{ dbt.type_timestamp() }})) as loaded_at
    from {{ this }}

),

relinked as (

    select distinct links.anonymous_id
    from links
    cross join last_build
    where links.loaded_at >= last_build.loaded_at

),

changed as (

    select events.*
    from events
    cross join last_build
    where events.loaded_at >= last_build.loaded_at
        or events.loaded_at is null
        or events.anonymous_id in (select anonymous_id from relinked)

),

{% else %}

changed as (

    select * from events

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
        first_links.stitched_contact_id,
        first_links.identified_at

    from changed
    left join first_links
        on changed.anonymous_id = first_links.anonymous_id

)

select * from final
