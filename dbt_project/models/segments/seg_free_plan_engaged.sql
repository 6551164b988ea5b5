{{ nudge_per_contact_model(events=['workout_completed'], wakes={'workout_completed': '14d'}) }}

-- Per contact (macros/per_contact_incremental.sql): membership changes with the contact's own
-- workouts and plan, and when 14 days pass after a workout.

with

events as (

    select * from {{ nudge_events_to_rebuild() }}

),

contacts as (

    select * from {{ ref('stg_contacts') }}

),

regular_exercisers as (

    {{ nudge_performers('workout_completed', at_least=2, within='14d', where='not is_syncing', events='events') }}

),

free_plan_contacts as (

    -- the plan is the contact's current property: there is no history of plan changes
    select contact_id
    from contacts
    where {{ json_get('properties', 'plan') }} = 'free'

),

final as (

    select
        cast(regular_exercisers.contact_id as {{ dbt.type_string() }}) as contact_id,
        -- best estimate: when the workouts became regular (the plan's own history is unknown)
        cast(regular_exercisers.member_since as {{ dbt.type_timestamp() }}) as member_since,
        regular_exercisers.event_count as workouts_last_14_days

    from regular_exercisers
    inner join free_plan_contacts
        on regular_exercisers.contact_id = free_plan_contacts.contact_id

)

select * from final
