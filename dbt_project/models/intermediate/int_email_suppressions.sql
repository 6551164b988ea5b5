{{ nudge_first_per_key_model('email') }}
{%- set last = nudge_first_per_key_watermark() -%}

-- Addresses no automation may mail again, marketing or transactional: the ones that
-- hard-bounced (the mailbox does not exist) or complained (marked a message as spam).
-- Mailbox providers judge a sender by both; a soft bounce (full mailbox, greylisting)
-- is temporary and suppresses nothing. Keyed by address, not contact: the bounce is
-- about the mailbox, and a contact who changes address may be mailed at the new one.
-- A build reads only the events loaded, or reached by the clock, since the last one.

with

events as (

    -- stg_events, not int_events: a bounce report is about an address and counts whether
    -- or not its contact_id is known; imported history counts too
    select * from {{ nudge_events_since(last) }}

),

permanent_failures as (

    select
        -- addresses compare case-insensitively in practice; the send compares the same way
        lower(trim({{ json_get('properties', 'email') }})) as email,
        case when event_name = 'email_complained' then 'complaint' else 'hard_bounce' end as reason,
        occurred_at,
        event_id,
        {{ json_get('properties', 'message_id') }} as message_id,
        contact_id

    from events
    where occurred_at <= {{ nudge_as_of() }}
        and (
            event_name = 'email_complained'
            or (event_name = 'email_bounced' and lower({{ json_get('properties', 'type') }}) = 'hard')
        )

),

new_failures as (

    -- a report without an address cannot suppress anything
    select * from permanent_failures
    where email is not null and email <> ''

),

failures as (

    select * from new_failures

    {% if last is not none %}
    union all

    -- the first failure so far of each address failing again: a late report may be earlier
    select email, reason, occurred_at, event_id, message_id, contact_id
    from {{ this }}
    where email in (select email from new_failures)
    {% endif %}

),

ranked as (

    select
        *,
        -- the first failure is the one that suppressed the address; later ones change nothing
        row_number() over (partition by email order by occurred_at, event_id) as failure_number

    from failures

),

final as (

    select
        email,
        reason,
        occurred_at,
        event_id,
        message_id,
        contact_id

    from ranked
    where failure_number = 1

)

select * from final
