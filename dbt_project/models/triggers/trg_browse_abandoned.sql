{{ nudge_per_contact_model(events=['product_viewed', 'added_to_cart'], wakes={'product_viewed': '2h'}) }}

-- Per contact (macros/per_contact_incremental.sql): a contact's browses change with their own
-- views and adds, and when 2 hours pass after a view.

with

events as (

    select * from {{ nudge_events_to_rebuild() }}

),

views as (

    select
        contact_id,
        event_id,
        occurred_at,
        properties,
        {{ json_get('properties', 'product_id') }} as product_id

    from events
    where event_name = 'product_viewed'
        -- a browse reminder is about a live visit: imported views are old news, never
        -- the first nor the second view of a pair
        and not is_syncing

),

adds as (

    select
        contact_id,
        occurred_at,
        {{ json_get('properties', 'product_id') }} as product_id

    from events
    -- any add counts, imported history included: the product is in a cart already
    where event_name = 'added_to_cart'

),

sequenced as (

    select
        *,
        lead(occurred_at) over (
            partition by contact_id, product_id
            order by occurred_at, event_id
        ) as next_viewed_at,
        -- the views of the same product in the 24 hours up to this one, itself included: a
        -- window, not a join of the views with themselves, which ran out of memory over 241
        -- days of history. The frame also holds views at the same instant with a later
        -- event_id, but only a view without such a peer can be the last of a visit.
        min(occurred_at) over (
            partition by contact_id, product_id
            order by occurred_at
            range between interval '24 hours' preceding and current row
        ) as first_viewed_at,
        count(*) over (
            partition by contact_id, product_id
            order by occurred_at
            range between interval '24 hours' preceding and current row
        ) as view_count

    from views
    where product_id is not null

),

last_views as (

    -- a view is the last of a visit when the contact did not view the product again
    -- within the 2 hours after it; it qualifies 2 hours later
    select
        *,
        {{ dbt.dateadd('hour', 2, 'occurred_at') }} as quiet_until

    from sequenced
    where (
            next_viewed_at is null
            or next_viewed_at > {{ dbt.dateadd('hour', 2, 'occurred_at') }}
        )
        -- only a pause that is over by as_of is known to be one
        and {{ dbt.dateadd('hour', 2, 'occurred_at') }} <= {{ nudge_as_of() }}

),

browses as (

    select
        last_views.contact_id,
        last_views.product_id,
        last_views.event_id,
        last_views.occurred_at as last_viewed_at,
        last_views.quiet_until as qualified_at,
        last_views.properties,
        last_views.first_viewed_at,
        last_views.view_count

    from last_views
    -- viewed at least twice within 24 hours
    where last_views.view_count >= 2

),

not_added as (

    select browses.*

    from browses
    left join adds
        on browses.contact_id = adds.contact_id
        and browses.product_id = adds.product_id
        -- added to the cart after the first view of the visit and by the time the
        -- reminder is due: the cart reminder's business, not this one's
        and adds.occurred_at >= browses.first_viewed_at
        and adds.occurred_at <= browses.qualified_at
    where adds.contact_id is null

),

periods as (

    select
        *,
        -- 7-day periods starting on Mondays (1970-01-05 was one), counted in UTC: at most
        -- one reminder per contact, product and period
        cast(floor(
            {{ dbt.datediff("cast('1970-01-05' as date)", 'cast(qualified_at as date)', 'day') }} / 7
        ) as {{ dbt.type_int() }}) as period_number

    from not_added

),

firsts as (

    select
        *,
        {{ dbt.dateadd('day', 'period_number * 7', "cast('1970-01-05' as date)") }} as period_started_on,
        row_number() over (
            partition by contact_id, product_id, period_number
            order by qualified_at, event_id
        ) as qualification_number

    from periods

),

qualifications as (

    select
        contact_id,
        contact_id || ':' || product_id || ':' || {{ dbt.cast(dbt.cast('period_started_on', 'date'), dbt.type_string()) }} as trigger_key,
        qualified_at,
        '{"product": ' || properties
            || ', "view_count": ' || cast(view_count as {{ dbt.type_string() }})
            || ', "first_viewed_at": ' || {{ json_string(dbt.cast('first_viewed_at', dbt.type_string())) }}
            || ', "last_viewed_at": ' || {{ json_string(dbt.cast('last_viewed_at', dbt.type_string())) }}
            || '}' as context

    from firsts
    where qualification_number = 1

),

final as (

    select
        {{ nudge_trigger_columns() }}

    from qualifications
    where qualified_at <= {{ nudge_as_of() }}

)

select * from final
