{{ nudge_per_contact_model(events=['product_viewed', 'added_to_cart', 'purchased']) }}

{%- set product_keys = ['product_id', 'name', 'category', 'price', 'quantity'] %}

-- What one contact's events say about each product, so the catalogue (int_products) adds up
-- contacts instead of reading every product event in the history each tick: a contact's rows
-- depend on their own events only (macros/per_contact_incremental.sql). Reading the JSON is
-- most of the work, and now only the contacts with something new are read.

with

-- imported history counts everywhere in the catalogue: a product someone viewed or
-- bought before the sync is still a product, and its popularity is real. Each import
-- reads the events for its own event names: DuckDB materializes a CTE that is read twice.

purchases as (

    select contact_id, event_id, event_name, occurred_at, properties
    from {{ nudge_events_to_rebuild() }}
    where event_name = 'purchased'

),

views_and_adds as (

    select contact_id, event_id, event_name, occurred_at, properties
    from {{ nudge_events_to_rebuild() }}
    where event_name in ('product_viewed', 'added_to_cart')

),

order_lines as (

    {{ json_unnest_array('purchases', ['contact_id', 'event_id', 'event_name', 'occurred_at'], 'properties', 'products') }}

),

product_objects as (

    -- a view or an add names one product in its properties; a purchase one per order line
    select contact_id, event_id, event_name, occurred_at, properties as product
    from views_and_adds

    union all

    select contact_id, event_id, event_name, occurred_at, element as product
    from order_lines

),

product_fields as (

    -- every key read in one pass over the JSON: this is most of the model's work
    select
        contact_id,
        event_id,
        event_name,
        occurred_at,
        {{ json_fields('product', product_keys) }} as fields

    from product_objects

),

mentions as (

    select
        contact_id,
        event_id,
        event_name,
        occurred_at,
        {{ json_field('fields', product_keys, 'product_id') }} as product_id,
        {{ json_field('fields', product_keys, 'name') }} as name,
        {{ json_field('fields', product_keys, 'category') }} as category,
        -- a price that is not a number is no price, rather than a failed build
        {{ text_number(json_field('fields', product_keys, 'price')) }} as price,
        -- only purchase lines' quantities add up (units_sold)
        {{ text_number(json_field('fields', product_keys, 'quantity')) }} as quantity

    from product_fields

),

typed as (

    select
        contact_id,
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
        contact_id,
        product_id,
        -- each attribute with the (time, event) it came from, for the catalogue to compare
        -- across contacts: a purchase line without a category must not blank one a view gave
        {%- for attribute in ['name', 'category', 'price'] %}
        {{ nudge_latest_value(attribute, 'occurred_at', 'event_id') }} as {{ attribute }},
        {{ nudge_latest_value('occurred_at', 'occurred_at', 'event_id', present=attribute) }} as {{ attribute }}_at,
        {{ nudge_latest_value('event_id', 'occurred_at', 'event_id', present=attribute) }} as {{ attribute }}_event_id,
        {%- endfor %}
        -- a sum of integers is a 128-bit integer in DuckDB: the contract says bigint
        cast(sum(case when event_name = 'product_viewed' then 1 else 0 end) as {{ dbt.type_bigint() }}) as view_count,
        cast(sum(case when event_name = 'added_to_cart' then 1 else 0 end) as {{ dbt.type_bigint() }}) as add_count,
        count(distinct case when event_name = 'purchased' then event_id end) as order_count,
        sum(case when event_name = 'purchased' then quantity else 0 end) as units_sold,
        min(occurred_at) as first_seen_at,
        max(occurred_at) as last_seen_at

    from typed
    group by contact_id, product_id

)

select * from final
