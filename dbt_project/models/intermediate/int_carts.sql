{{ nudge_per_contact_model(events=['added_to_cart', 'purchased']) }}

-- A contact's carts depend on their own events only: each tick rebuilds the contacts
-- with something new (macros/per_contact_incremental.sql), not the whole history.

with

events as (

    select * from {{ nudge_events_to_rebuild() }}

),

cart_events as (

    select
        contact_id,
        event_id,
        event_name,
        occurred_at,
        properties,
        is_syncing

    -- adds and purchases alone: the events declared at the top
    from events
    -- nothing after the run's clock has happened yet
    where occurred_at <= {{ nudge_as_of() }}

),

numbered as (

    select
        *,
        -- a purchase at the same instant as an add is ordered after it, so it closes the
        -- cart holding that add rather than opening a new one before it
        sum(case when event_name = 'purchased' then 1 else 0 end) over (
            partition by contact_id
            order by
                occurred_at,
                case when event_name = 'purchased' then 1 else 0 end,
                event_id
            rows between unbounded preceding and current row
        ) as purchases_so_far

    from cart_events

),

adds as (

    select
        contact_id,
        event_id,
        occurred_at,
        properties,
        is_syncing,
        purchases_so_far as cart_number,
        row_number() over (
            partition by contact_id, purchases_so_far
            order by occurred_at, event_id
        ) as position_in_cart

    from numbered
    where event_name = 'added_to_cart'

),

closing_purchases as (

    select
        contact_id,
        -- the n-th purchase closes the cart its adds were numbered n - 1 in
        purchases_so_far - 1 as cart_number,
        occurred_at as purchased_at

    from numbered
    where event_name = 'purchased'

),

carts as (

    select
        contact_id,
        cart_number,
        max(case when position_in_cart = 1 then event_id end) as cart_id,
        min(occurred_at) as first_added_at,
        max(occurred_at) as last_added_at,
        count(*) as item_count,
        '[' || {{ nudge_ordered_listagg('properties', "','", ['occurred_at', 'event_id']) }} || ']' as items,
        min(case when is_syncing then 1 else 0 end) = 1 as is_syncing_only

    from adds
    group by contact_id, cart_number

),

final as (

    select
        carts.contact_id,
        carts.cart_id,
        carts.first_added_at,
        carts.last_added_at,
        carts.item_count,
        carts.items,
        carts.is_syncing_only,
        closing_purchases.purchased_at

    from carts
    left join closing_purchases
        on carts.contact_id = closing_purchases.contact_id
        and carts.cart_number = closing_purchases.cart_number

)

select * from final
