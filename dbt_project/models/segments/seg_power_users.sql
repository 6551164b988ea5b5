{{ nudge_per_contact_model(events=['workout_completed'], wakes={'workout_completed': '7d'}) }}

-- Per contact (macros/per_contact_incremental.sql): membership changes with the contact's own
-- workouts, and when 7 days pass after one.

with

events as (

    select * from {{ nudge_events_to_rebuild() }}

),

frequent_exercisers as (

    {{ nudge_performers('workout_completed', at_least=3, within='7d', where='not is_syncing', events='events') }}

),

final as (

    select
        cast(contact_id as {{ dbt.type_string() }}) as contact_id,
        cast(member_since as {{ dbt.type_timestamp() }}) as member_since,
        event_count as workouts_last_7_days,
        cast(last_performed_at as {{ dbt.type_timestamp() }}) as last_workout_at

    from frequent_exercisers

)

select * from final
