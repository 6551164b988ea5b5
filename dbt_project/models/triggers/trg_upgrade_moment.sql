{{ nudge_per_contact_model(events=['plan_limit_reached', 'premium_feature_used']) }}

-- A contact's upgrade moments depend on their own events and plan only, and qualify when
-- the event happens: each tick rebuilds the contacts with something new
-- (macros/per_contact_incremental.sql), not the whole history.

with

events as (

    -- only the events the moments read (declared at the top): a full build's every event,
    -- windowed, spilled past the tick's memory limit (7.4 s against 0.9 s at 10M)
    select * from {{ nudge_events_to_rebuild() }}

),

contacts as (

    select * from {{ ref('stg_contacts') }}

),

free_plan_contacts as (

    -- the current plan: a contact who has upgraded since is premium here and drops out
    select contact_id
    from contacts
    where {{ json_get('properties', 'plan') }} = 'free'

),

counted as (

    -- each event with how many of the contact's events of its name (imported ones too) fall
    -- in the 7 days up to it, (event - 7 days, event]: the frame holds those from exactly 7
    -- days before, so they are taken off again. Windows, not nudge_performed's count per
    -- try, which joined each contact's tries with each other and ran out of memory over 241
    -- days of history.
    select
        *,
        count(*) over (
            partition by contact_id, event_name
            order by occurred_at
            range between interval '7 days' preceding and current row
        )
        - count(*) over (
            partition by contact_id, event_name
            order by occurred_at
            range between interval '7 days' preceding and interval '7 days' preceding
        ) as same_events_within_7_days

    from events

),

moments as (

    -- a plan limit reached, or a try of a premium feature that is at least the third in
    -- the 7 days up to it
    select
        contact_id,
        event_id,
        event_name as reason,
        occurred_at,
        properties,
        is_syncing

    from counted
    where event_name = 'plan_limit_reached'
        or (event_name = 'premium_feature_used' and same_events_within_7_days >= 3)

),

qualifications as (

    select
        moments.contact_id,
        -- one qualification per moment; the 30-day re-entry rule keeps it to one email
        moments.event_id as trigger_key,
        moments.occurred_at as qualified_at,
        '{"reason": ' || {{ json_string('moments.reason') }}
            || ', "event_id": ' || {{ json_string('moments.event_id') }}
            || ', "properties": ' || moments.properties
            || '}' as context

    from moments
    inner join free_plan_contacts
        on moments.contact_id = free_plan_contacts.contact_id
    -- imported history is recorded, never acted on
    where not moments.is_syncing

),

final as (

    select
        {{ nudge_trigger_columns() }}

    from qualifications
    where qualified_at <= {{ nudge_as_of() }}

)

select * from final
