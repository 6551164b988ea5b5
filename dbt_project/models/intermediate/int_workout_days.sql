{{ nudge_per_contact_model(events=['workout_completed']) }}

-- A contact's days depend on their own workouts and time zone only: each tick rebuilds
-- the contacts with something new (macros/per_contact_incremental.sql).

with

events as (

    select * from {{ nudge_events_to_rebuild() }}

),

contacts as (

    select * from {{ ref('stg_contacts') }}

),

workouts as (

    select
        events.contact_id,
        events.event_id,
        events.occurred_at,
        events.properties,
        events.is_syncing,
        -- a day is the contact's own calendar day; staging makes the zone valid, and a
        -- missing one (or an event of a contact not in stg_contacts) counts in UTC
        cast(
            {{ nudge_to_local('events.occurred_at', "coalesce(nullif(trim(contacts.timezone), ''), 'UTC')") }}
            as date
        ) as workout_date

    from events
    left join contacts
        on events.contact_id = contacts.contact_id
    -- imported history counts here: a streak is the contact's real training, whether
    -- the app sent it live or a sync brought it in (it never qualifies on its own)
    where events.event_name = 'workout_completed'

),

ranked as (

    select
        *,
        -- the first live workout of the day is the one a day's email is about
        row_number() over (
            partition by contact_id, workout_date, is_syncing
            order by occurred_at, event_id
        ) as number_within_kind

    from workouts

),

days as (

    select
        contact_id,
        workout_date,
        count(*) as workout_count,
        -- a sum of integers is a 128-bit integer in DuckDB: the contract says bigint
        cast(sum(case when is_syncing then 0 else 1 end) as {{ dbt.type_bigint() }}) as live_workout_count,
        max(case when not is_syncing and number_within_kind = 1 then event_id end) as first_live_event_id,
        max(case when not is_syncing and number_within_kind = 1 then occurred_at end) as first_live_occurred_at,
        max(case when not is_syncing and number_within_kind = 1 then properties end) as first_live_properties

    from ranked
    group by contact_id, workout_date

),

islands as (

    select
        *,
        -- gaps and islands: consecutive days minus their position in the contact's
        -- sequence of days give the same number for every day of one unbroken run
        {{ dbt.datediff("cast('1970-01-01' as date)", 'workout_date', 'day') }}
            - row_number() over (partition by contact_id order by workout_date) as island

    from days

),

final as (

    select
        contact_id,
        workout_date,
        workout_count,
        live_workout_count,
        first_live_event_id,
        first_live_occurred_at,
        first_live_properties,
        min(workout_date) over (partition by contact_id, island) as streak_started_on,
        row_number() over (partition by contact_id, island order by workout_date) as streak_days

    from islands

)

select * from final
