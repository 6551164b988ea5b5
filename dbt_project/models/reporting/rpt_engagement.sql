-- What recipients did with the emails that went: the email_* events the email provider
-- reports (delivered, opened, clicked, bounced, complained) carry the ledger's
-- message_id in their properties, so each lands on exactly one sent message.
-- Counts are of messages, not events: a message opened five times is opened once.

with

messages as (

    select * from {{ source('nudge', 'messages') }}

),

events as (

    select * from {{ ref('int_events') }}

),

sent as (

    select
        automation,
        message_id

    from messages
    where status = 'sent'

),

email_events as (

    select
        {{ json_get('properties', 'message_id') }} as message_id,
        event_name,
        {{ json_get('properties', 'type') }} as bounce_type

    from events
    where event_name in ('email_delivered', 'email_opened', 'email_clicked', 'email_bounced', 'email_complained')

),

per_message as (

    select
        sent.automation,
        sent.message_id,
        max(case when email_events.event_name = 'email_delivered' then 1 else 0 end) as delivered,
        -- a click proves the email was opened even when the client blocked the open pixel
        max(case when email_events.event_name in ('email_opened', 'email_clicked') then 1 else 0 end) as opened,
        max(case when email_events.event_name = 'email_clicked' then 1 else 0 end) as clicked,
        max(case when email_events.event_name = 'email_bounced' then 1 else 0 end) as bounced,
        max(case when email_events.event_name = 'email_bounced' and email_events.bounce_type = 'hard' then 1 else 0 end)
            as hard_bounced,
        max(case when email_events.event_name = 'email_complained' then 1 else 0 end) as complained

    from sent
    left join email_events
        on sent.message_id = email_events.message_id
    group by sent.automation, sent.message_id

),

counts as (

    select
        automation,
        count(*) as sent,
        -- a sum of integers is a 128-bit integer in DuckDB: the contract says bigint
        cast(sum(delivered) as {{ dbt.type_bigint() }}) as delivered,
        cast(sum(opened) as {{ dbt.type_bigint() }}) as opened,
        cast(sum(clicked) as {{ dbt.type_bigint() }}) as clicked,
        cast(sum(bounced) as {{ dbt.type_bigint() }}) as bounced,
        cast(sum(hard_bounced) as {{ dbt.type_bigint() }}) as hard_bounced,
        cast(sum(complained) as {{ dbt.type_bigint() }}) as complained

    from per_message
    group by automation

),

final as (

    -- rates over the messages that reached an inbox (sent minus bounced), as Mailchimp
    -- computes them; a backend that reports no deliveries still gets rates
    select
        *,
        round(cast(cast(opened as {{ nudge_type_double() }}) / nullif(sent - bounced, 0) as {{ dbt.type_numeric() }}), 4)
            as open_rate,
        round(cast(cast(clicked as {{ nudge_type_double() }}) / nullif(sent - bounced, 0) as {{ dbt.type_numeric() }}), 4)
            as click_rate,
        round(cast(cast(clicked as {{ nudge_type_double() }}) / nullif(opened, 0) as {{ dbt.type_numeric() }}), 4)
            as click_to_open_rate,
        round(cast(cast(bounced as {{ nudge_type_double() }}) / nullif(sent, 0) as {{ dbt.type_numeric() }}), 4)
            as bounce_rate

    from counts

)

select * from final
