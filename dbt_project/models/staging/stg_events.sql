{#- Where the product's events come from (var nudge_event_source): the landing files Nudge
    ingests itself, or the tables a Segment or RudderStack warehouse loader writes. Every
    source gives the same columns, so nothing downstream knows which one it is. -#}
{%- set event_source = nudge_event_source() -%}

with

{% if event_source == 'landing' %}

source as (

    select * from {{ source('raw', 'events') }}

),

events as (

    select
        event_id,
        contact_id,
        anonymous_id,
        name as event_name,
        occurred_at,
        properties,
        is_syncing,
        loaded_at

    from source

),

{% else %}

tracks as (

    select * from {{ ref('stg_' ~ event_source ~ '__tracks') }}

),

identifies as (

    select * from {{ ref('stg_' ~ event_source ~ '__identifies') }}

),

events as (

    select event_id, contact_id, anonymous_id, event_name, occurred_at, properties, is_syncing, loaded_at
    from tracks

    union all

    select event_id, contact_id, anonymous_id, event_name, occurred_at, properties, is_syncing, loaded_at
    from identifies

),

{% endif %}

final as (

    select
        cast(event_id as {{ dbt.type_string() }}) as event_id,
        cast(contact_id as {{ dbt.type_string() }}) as contact_id,
        cast(anonymous_id as {{ dbt.type_string() }}) as anonymous_id,
        cast(event_name as {{ dbt.type_string() }}) as event_name,
        cast(occurred_at as {{ dbt.type_timestamp() }}) as occurred_at,
        cast(properties as {{ dbt.type_string() }}) as properties,
        cast(is_syncing as {{ dbt.type_boolean() }}) as is_syncing,
        cast(loaded_at as {{ dbt.type_timestamp() }}) as loaded_at

    from events

)

select * from final
