-- Did the email make people do what it was for? For each automation with a conversion
-- goal: the share of contacts sent the email who performed the goal event within the
-- window after sent_at, the same share in the holdout (control group) counted from
-- decided_at (the moment the email would have gone), the lift between the two with a
-- 95% Newcombe hybrid score interval, and the purchase revenue attributed to the
-- automation by last touch.

{%- set z = 1.959964 %}
{%- set float = nudge_type_double() %}

with

messages as (

    select * from {{ source('nudge', 'messages') }}

),

automations as (

    select * from {{ ref('rpt_automations') }}

),

conversion_events as (

    -- the columns a conversion needs, without properties: purchases below read int_events
    -- on their own, since DuckDB materializes a CTE that is read twice (every event, here)
    select event_id, contact_id, event_name, occurred_at
    from {{ ref('int_events') }}

),

goals as (

    select
        automation,
        conversion_event,
        conversion_window,
        conversion_window_seconds

    from automations
    where conversion_event is not null

),

exposures as (

    -- a holdout contact never got an email: its clock starts when the tick decided to
    -- hold it back, as a sent contact's starts when the email went
    select
        messages.automation,
        messages.contact_id,
        case when messages.status = 'sent' then 'sent' else 'holdout' end as exposure_group,
        case when messages.status = 'sent' then messages.sent_at else messages.decided_at end as exposed_at,
        goals.conversion_event,
        goals.conversion_window_seconds

    from messages
    inner join goals
        on messages.automation = goals.automation
    where (messages.status = 'sent' and messages.sent_at is not null)
        or messages.status = 'held_out'

),

contact_outcomes as (

    -- the unit is the contact: one who got the email twice (re-entry) counts once, as
    -- converted when the goal followed any of their emails within the window. The
    -- holdout coin is per contact and automation, so nobody is in both groups.
    select
        exposures.automation,
        exposures.contact_id,
        exposures.exposure_group,
        max(case when conversion_events.event_id is not null then 1 else 0 end) as converted

    from exposures
    left join conversion_events
        on conversion_events.contact_id = exposures.contact_id
        and conversion_events.event_name = exposures.conversion_event
        and conversion_events.occurred_at > exposures.exposed_at
        and conversion_events.occurred_at <= {{ dbt.dateadd('second', 'exposures.conversion_window_seconds', 'exposures.exposed_at') }}
    group by exposures.automation, exposures.contact_id, exposures.exposure_group

),

group_counts as (

    select
        automation,
        count(case when exposure_group = 'sent' then 1 end) as sent_contacts,
        -- a sum of integers is a 128-bit integer in DuckDB: the contract says bigint
        cast(sum(case when exposure_group = 'sent' then converted else 0 end) as {{ dbt.type_bigint() }}) as sent_converted,
        count(case when exposure_group = 'holdout' then 1 end) as holdout_contacts,
        cast(sum(case when exposure_group = 'holdout' then converted else 0 end) as {{ dbt.type_bigint() }}) as holdout_converted

    from contact_outcomes
    group by automation

),

rates as (

    select
        goals.automation,
        goals.conversion_event,
        goals.conversion_window,
        coalesce(group_counts.sent_contacts, 0) as sent_contacts,
        coalesce(group_counts.sent_converted, 0) as sent_converted,
        coalesce(group_counts.holdout_contacts, 0) as holdout_contacts,
        coalesce(group_counts.holdout_converted, 0) as holdout_converted,
        cast(group_counts.sent_converted as {{ float }})
            / nullif(group_counts.sent_contacts, 0) as p_sent,
        cast(group_counts.holdout_converted as {{ float }})
            / nullif(group_counts.holdout_contacts, 0) as p_holdout

    from goals
    left join group_counts
        on goals.automation = group_counts.automation

),

wilson as (

    -- Wilson score interval of each group's rate, the pieces of Newcombe's interval:
    -- centre (p + z²/2n) / (1 + z²/n), half-width z sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n);
    -- null for an empty group (nullif keeps every adapter from dividing by zero)
    select
        *
        {%- for group in ['sent', 'holdout'] %}
        {%- set p = 'p_' ~ group %}
        {%- set n = 'nullif(' ~ group ~ '_contacts, 0)' %}
        {%- set centre = '(' ~ p ~ ' + ' ~ z * z ~ ' / (2.0 * ' ~ n ~ '))' %}
        {%- set half = z ~ ' * sqrt(' ~ p ~ ' * (1 - ' ~ p ~ ') / ' ~ n ~ ' + ' ~ z * z ~ ' / (4.0 * ' ~ n ~ ' * ' ~ n ~ '))' %}
        {%- set scale = '(1 + ' ~ z * z ~ ' / ' ~ n ~ ')' %},
        ({{ centre }} - {{ half }}) / {{ scale }} as {{ group }}_low,
        ({{ centre }} + {{ half }}) / {{ scale }} as {{ group }}_high
        {%- endfor %}

    from rates

),

lift as (

    -- Newcombe (1998) method 10, the hybrid score interval for p_sent - p_holdout: it
    -- stays inside [-1, 1] and keeps its coverage with small groups and rates near 0,
    -- where the Wald interval does not (holdouts are small by design)
    select
        *,
        p_sent - p_holdout as lift_difference,
        (p_sent - p_holdout)
            - sqrt((p_sent - sent_low) * (p_sent - sent_low)
                + (holdout_high - p_holdout) * (holdout_high - p_holdout)) as lift_ci_low,
        (p_sent - p_holdout)
            + sqrt((sent_high - p_sent) * (sent_high - p_sent)
                + (p_holdout - holdout_low) * (p_holdout - holdout_low)) as lift_ci_high

    from wilson

),

sends as (

    select
        messages.automation,
        messages.contact_id,
        messages.message_id,
        messages.sent_at,
        goals.conversion_window_seconds

    from messages
    inner join goals
        on messages.automation = goals.automation
    where messages.status = 'sent'
        and messages.sent_at is not null

),

purchases as (

    select
        event_id,
        contact_id,
        occurred_at,
        cast({{ json_get('properties', var('nudge_revenue_property', 'total')) }} as {{ dbt.type_numeric() }}) as revenue

    from {{ ref('int_events') }}
    where event_name = '{{ var("nudge_revenue_event", "purchased") }}'

),

touches as (

    -- last touch: every email whose window holds the purchase is a candidate; the latest
    -- sent before it takes the purchase (message_id breaks a tie of one tick's sends)
    select
        purchases.event_id,
        purchases.revenue,
        sends.automation,
        row_number() over (
            partition by purchases.event_id
            order by sends.sent_at desc, sends.message_id desc
        ) as touch_rank

    from purchases
    inner join sends
        on purchases.contact_id = sends.contact_id
        and purchases.occurred_at > sends.sent_at
        and purchases.occurred_at <= {{ dbt.dateadd('second', 'sends.conversion_window_seconds', 'sends.sent_at') }}

),

attributed as (

    select
        automation,
        count(*) as attributed_purchases,
        sum(revenue) as attributed_revenue

    from touches
    where touch_rank = 1
    group by automation

),

final as (

    select
        lift.automation,
        lift.conversion_event,
        lift.conversion_window,
        lift.sent_contacts,
        lift.sent_converted,
        round(cast(lift.p_sent as {{ dbt.type_numeric() }}), 4) as sent_conversion_rate,
        lift.holdout_contacts,
        lift.holdout_converted,
        round(cast(lift.p_holdout as {{ dbt.type_numeric() }}), 4) as holdout_conversion_rate,
        round(cast(lift.lift_difference as {{ dbt.type_numeric() }}), 4) as lift,
        round(cast(lift.lift_difference / nullif(lift.p_holdout, 0) as {{ dbt.type_numeric() }}), 4) as relative_lift,
        round(cast(lift.lift_ci_low as {{ dbt.type_numeric() }}), 4) as lift_ci_low,
        round(cast(lift.lift_ci_high as {{ dbt.type_numeric() }}), 4) as lift_ci_high,
        coalesce(attributed.attributed_purchases, 0) as attributed_purchases,
        coalesce(attributed.attributed_revenue, 0) as attributed_revenue

    from lift
    left join attributed
        on lift.automation = attributed.automation

)

select * from final
