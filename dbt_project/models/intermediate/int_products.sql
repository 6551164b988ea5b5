with

-- imported history counts everywhere in the catalogue: a product someone viewed or
-- bought before the sync is still a product, and its popularity is real. Each import
-- reads int_events for its own event names: DuckDB materializes a CTE that is read twice.

purchases as (

    select event_id, event_name, occurred_at, properties
    from {{ ref('int_events') }}
    where event_name = 'purchased'

),

views_and_adds as (

    select event_id, event_name, occurred_at, properties
    from {{ ref('int_events') }}
    where event_name in ('product_viewed', 'added_to_cart')

),

order_lines as (

    {{ json_unnest_array('purchases', ['event_id', 'event_name', 'occurred_at'], 'properties', 'products') }}

),

product_objects as (

    -- a view or an add names one product in its properties; a purchase one per order line
    select event_id, event_name, occurred_at, properties as product
    from views_and_adds

    union all

    select event_id, event_name, occurred_at, element as product
    from order_lines

),

mentions as (

    select
        event_id,
        event_name,
        occurred_at,
        {{ json_get('product', 'product_id') }} as product_id,
        {{ json_get('product', 'name') }} as name,
        {{ json_get('product', 'category') }} as category,
        -- a price that is not a number is no price, rather than a failed build
        {{ json_number('product', 'price') }} as price,
        -- only purchase lines' quantities add up (units_sold)
        {{ json_number('product', 'quantity') }} as quantity

    from product_objects

),

typed as (

    select
        event_id,
        event_name,
        occurred_at,
        product_id,
        nullif(trim(name), '') as name,
        nullif(trim(category), '') as category,
        price,
        coalesce(quantity, 1) as quantity

    from mentions
    where nullif(trim(product_id), '') is not null

),

final as (

    select
        product_id,
        -- each attribute comes from the latest event that carried it: a purchase line
        -- without a category must not blank the category a view gave
        {{ nudge_latest_value('name', 'occurred_at', 'event_id') }} as name,
        {{ nudge_latest_value('category', 'occurred_at', 'event_id') }} as category,
        {{ nudge_latest_value('price', 'occurred_at', 'event_id') }} as price,
        -- a sum of integers is a 128-bit integer in DuckDB: the contract says bigint
        cast(sum(case when event_name = 'product_viewed' then 1 else 0 end) as {{ dbt.type_bigint() }}) as view_count,
        cast(sum(case when event_name = 'added_to_cart' then 1 else 0 end) as {{ dbt.type_bigint() }}) as add_count,
        count(distinct case when event_name = 'purchased' then event_id end) as order_count,
        sum(case when event_name = 'purchased' then quantity else 0 end) as units_sold,
        min(occurred_at) as first_seen_at,
        max(occurred_at) as last_seen_at

    from typed
    group by product_id

)

select * from final
