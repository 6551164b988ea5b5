{{ nudge_per_contact_model(events=['purchased'], wakes={'purchased': '30d'}) }}

-- Per contact (macros/per_contact_incremental.sql): membership changes with the contact's own
-- purchases, and when 30 days pass after one.

with

events as (

    select * from {{ nudge_events_to_rebuild() }}

),

recent_buyers as (

    {{ nudge_performers('purchased', within='30d', where='not is_syncing', events='events') }}

),

first_purchases as (

    -- history counts here: a contact who bought before the import is a returning buyer
    {{ nudge_first_occurrence('purchased', events='events') }}

),

final as (

    select
        cast(recent_buyers.contact_id as {{ dbt.type_string() }}) as contact_id,
        cast(recent_buyers.member_since as {{ dbt.type_timestamp() }}) as member_since,
        recent_buyers.event_count as purchases_last_30_days,
        cast(recent_buyers.last_performed_at as {{ dbt.type_timestamp() }}) as last_purchased_at,
        cast(first_purchases.occurred_at as {{ dbt.type_timestamp() }}) as first_purchased_at,
        first_purchases.occurred_at < recent_buyers.member_since as is_returning_buyer

    from recent_buyers
    inner join first_purchases
        on recent_buyers.contact_id = first_purchases.contact_id

)

select * from final
