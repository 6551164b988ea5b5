{% set clicked_automation = json_get('properties', 'automation') %}

{{ nudge_per_contact_model(events=['email_clicked', 'purchased', 'product_viewed'], wakes={'email_clicked': '72h'}) }}

-- Per contact (macros/per_contact_incremental.sql): a contact's qualifications change with their
-- own events, and when 72 hours pass after a click.

with

events as (

    select * from {{ nudge_events_to_rebuild() }}

),

clicks_without_purchase as (

    -- a click on this very reminder does not start another one
    {{ nudge_a_then_no_b(
        'email_clicked',
        'purchased',
        '72h',
        a_where="coalesce(" ~ clicked_automation ~ ", '') <> 'clicked_no_purchase'",
        events='events'
    ) }}

),

views_after_clicks as (

    -- what they looked at after the click, newest view of each product first
    select
        clicks_without_purchase.event_id as click_event_id,
        views.occurred_at,
        views.properties,
        {{ json_get('views.properties', 'product_id') }} as product_id,
        row_number() over (
            partition by clicks_without_purchase.event_id, {{ json_get('views.properties', 'product_id') }}
            order by views.occurred_at desc, views.event_id desc
        ) as view_of_product

    from clicks_without_purchase
    inner join events as views
        on clicks_without_purchase.contact_id = views.contact_id
        and views.event_name = 'product_viewed'
        and views.occurred_at > clicks_without_purchase.occurred_at
        and views.occurred_at <= clicks_without_purchase.window_ended_at

),

latest_products as (

    select
        click_event_id,
        occurred_at,
        properties,
        row_number() over (
            partition by click_event_id
            order by occurred_at desc, product_id
        ) as recency

    from views_after_clicks
    where view_of_product = 1

),

viewed_products as (

    -- at most three: an email, not a catalogue
    select
        click_event_id,
        '[' || {{ nudge_ordered_listagg('properties', "','", ['recency']) }} || ']' as products

    from latest_products
    where recency <= 3
    group by click_event_id

),

qualifications as (

    select
        clicks_without_purchase.contact_id,
        clicks_without_purchase.event_id as trigger_key,
        -- the moment the 72 hours without a purchase were up
        clicks_without_purchase.window_ended_at as qualified_at,
        clicks_without_purchase.is_syncing,
        '{"automation": ' || coalesce({{ json_string(json_get('clicks_without_purchase.properties', 'automation')) }}, 'null')
            || ', "url": ' || coalesce({{ json_string(json_get('clicks_without_purchase.properties', 'url')) }}, 'null')
            || ', "clicked_at": ' || {{ json_string('cast(clicks_without_purchase.occurred_at as ' ~ dbt.type_string() ~ ')') }}
            || ', "viewed_products": ' || coalesce(viewed_products.products, '[]')
            || '}' as context

    from clicks_without_purchase
    left join viewed_products
        on clicks_without_purchase.event_id = viewed_products.click_event_id

),

final as (

    select
        {{ nudge_trigger_columns() }}

    from qualifications
    where qualified_at <= {{ nudge_as_of() }}
        -- imported history is recorded, never acted on
        and not is_syncing

)

select * from final
