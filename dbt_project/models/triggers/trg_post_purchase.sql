with

events as (

    select * from {{ ref('int_events') }}

),

products as (

    select * from {{ ref('int_products') }}

),

purchases as (

    select
        contact_id,
        event_id,
        occurred_at,
        properties,
        is_syncing

    from events
    where event_name = 'purchased'

),

order_lines as (

    {{ json_unnest_array('purchases', ['contact_id', 'event_id', 'is_syncing'], 'properties', 'products') }}

),

bought as (

    -- everything the contact has bought by as_of, imported history included (a product
    -- bought before the sync is still bought), and orders after this one too: the email
    -- goes out a day later and must not suggest what they bought meanwhile
    select distinct
        contact_id,
        {{ json_get('element', 'product_id') }} as product_id

    from order_lines

),

order_categories as (

    select distinct
        order_lines.event_id,
        order_lines.contact_id,
        -- purchase lines may lack a category: the catalogue knows it from views and adds
        coalesce(
            nullif(trim({{ json_get('order_lines.element', 'category') }}), ''),
            products.category
        ) as category

    from order_lines
    left join products
        on {{ json_get('order_lines.element', 'product_id') }} = products.product_id
    where not order_lines.is_syncing

),

candidates as (

    select
        order_categories.event_id,
        products.product_id,
        products.name,
        products.category,
        products.price,
        -- the catalogue's most wanted first (views and adds by everyone), ties by id
        row_number() over (
            partition by order_categories.event_id
            order by products.view_count + products.add_count desc, products.product_id
        ) as recommendation_rank

    from order_categories
    inner join products
        on order_categories.category = products.category
    left join bought
        on order_categories.contact_id = bought.contact_id
        and products.product_id = bought.product_id
    where bought.product_id is null
        -- a recommendation without a name cannot be shown
        and products.name is not null

),

top_candidates as (

    select
        event_id,
        recommendation_rank,
        '{"product_id": ' || {{ json_string('product_id') }}
            || ', "name": ' || {{ json_string('name') }}
            || ', "category": ' || {{ json_string('category') }}
            || ', "price": ' || coalesce(cast(price as {{ dbt.type_string() }}), 'null')
            || '}' as recommendation

    from candidates
    where recommendation_rank <= 3

),

recommendations as (

    select
        event_id,
        '[' || {{ dbt.listagg('recommendation', "', '", 'order by recommendation_rank') }} || ']' as recommendations

    from top_candidates
    group by event_id

),

qualifications as (

    select
        purchases.contact_id,
        -- every purchase is its own thank-you
        purchases.event_id as trigger_key,
        purchases.occurred_at as qualified_at,
        '{"event_id": ' || {{ json_string('purchases.event_id') }}
            || ', "order": ' || purchases.properties
            || ', "recommendations": ' || coalesce(recommendations.recommendations, '[]')
            || '}' as context

    from purchases
    left join recommendations
        on purchases.event_id = recommendations.event_id
    -- imported orders were thanked for elsewhere, long ago
    where not purchases.is_syncing

),

final as (

    select
        {{ nudge_trigger_columns() }}

    from qualifications
    where qualified_at <= {{ nudge_as_of() }}

)

select * from final
