{{ nudge_per_contact_model(events=['added_to_cart', 'purchased'], wakes={'added_to_cart': '1h'}) }}

-- Per contact (macros/per_contact_incremental.sql), as int_carts is; a cart is abandoned an
-- hour after its last add, the time rule below.

with

carts as (

    select * from {{ nudge_rows_to_rebuild(ref('int_carts')) }}

),

qualifications as (

    select
        contact_id,
        cart_id as trigger_key,
        -- a cart is abandoned once an hour passes after its last add without a purchase
        {{ dbt.dateadd('hour', 1, 'last_added_at') }} as qualified_at,
        purchased_at,
        is_syncing_only,
        '{"cart_id": ' || {{ json_string('cart_id') }} || ', "items": ' || items || '}' as context

    from carts

),

final as (

    select
        {{ nudge_trigger_columns() }}

    from qualifications
    where qualified_at <= {{ nudge_as_of() }}
        -- bought within the hour: never abandoned. Bought later: an exit the send step records.
        and (purchased_at is null or purchased_at > qualified_at)
        -- imported history is recorded, never acted on
        and not is_syncing_only

)

select * from final
