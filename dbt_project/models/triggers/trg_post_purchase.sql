{#- Recommendations are worked out only for the orders whose thank-you can still go out at
    as_of: bought at most the automation's delay plus its send window before it (48 h). They
    follow everyone's views and adds, so they cannot be kept from an earlier build; for the
    whole history (190,000 orders at 10M events) they were most of this model's 2 s an hour,
    for rows no tick sends any more. Older orders carry [].

    Rebuilt for the contacts with something new (macros/per_contact_incremental.sql) and for
    the orders sendable at the last build or since (macros/sendable_window.sql), not for the
    whole history: a table of every order, rebuilt every hour, was the slowest model of a tick
    with nothing new (0.8 s at 10M events). -#}
{{ nudge_per_contact_model(events=['purchased']) }}
{{ config(pre_hook="{{ nudge_forget_rows_sendable_at_last_build() }}") }}
{%- set sendable_since = nudge_sendable_since(nudge_as_of()) -%}
{%- set rebuilt_since = nudge_sendable_at_last_build() %}

with

purchases as (

    select * from {{ ref('int_purchases') }}

),

purchases_built_now as (

    select * from {{ nudge_rows_to_rebuild(ref('int_purchases')) }}
    {%- if rebuilt_since is not none %}

    union

    select * from purchases
    where occurred_at >= {{ rebuilt_since }}
    {%- endif %}

),

products as (

    select * from {{ ref('int_products') }}

),

sendable_orders as (

    select event_id, contact_id
    from purchases
    -- imported orders were thanked for elsewhere, long ago
    where not is_syncing
    {%- if sendable_since is not none %}
        and occurred_at >= {{ sendable_since }}
    {%- endif %}

),

purchases_of_their_buyers as (

    -- every order of those contacts: what they bought is never recommended to them
    select purchases.*
    from purchases
    inner join (select distinct contact_id from sendable_orders) as buyers
        on purchases.contact_id = buyers.contact_id

),

order_lines as (

    {{ json_unnest_array('purchases_of_their_buyers', ['contact_id', 'event_id'], 'properties', 'products') }}

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
    where order_lines.event_id in (select event_id from sendable_orders)

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
        '[' || {{ nudge_ordered_listagg('recommendation', "', '", ['recommendation_rank']) }} || ']' as recommendations

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

    from purchases_built_now as purchases
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
