-- One row per product: the catalogue, added up from each contact's mentions
-- (int_product_mentions), which only the contacts with something new rebuild.

with

mentions as (

    select * from {{ ref('int_product_mentions') }}

),

final as (

    select
        product_id,
        -- the latest of each contact's latest: the same (time, event) order across everyone
        {%- for attribute in ['name', 'category', 'price'] %}
        {{ nudge_latest_value(attribute, attribute ~ '_at', attribute ~ '_event_id') }} as {{ attribute }},
        {%- endfor %}
        cast(sum(view_count) as {{ dbt.type_bigint() }}) as view_count,
        cast(sum(add_count) as {{ dbt.type_bigint() }}) as add_count,
        -- an order belongs to one contact: their distinct orders add up
        cast(sum(order_count) as {{ dbt.type_bigint() }}) as order_count,
        sum(units_sold) as units_sold,
        min(first_seen_at) as first_seen_at,
        max(last_seen_at) as last_seen_at

    from mentions
    group by product_id

)

select * from final
