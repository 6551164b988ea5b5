{{ nudge_per_contact_model(events=['workout_completed']) }}

-- Rebuilt for the contacts whose workout days were (int_workout_days: the same rule, the
-- same time zones), not for the whole history.

with

workout_days as (

    select * from {{ nudge_rows_to_rebuild(ref('int_workout_days')) }}

),

qualifications as (

    select
        contact_id,
        -- one email per contact per local day, about the day's first live workout; later
        -- workouts that day and imported history never qualify
        first_live_event_id as trigger_key,
        first_live_occurred_at as qualified_at,
        '{"event_id": ' || {{ json_string('first_live_event_id') }}
            || ', "workout": ' || first_live_properties
            || ', "workout_date": ' || {{ json_string(dbt.cast('workout_date', dbt.type_string())) }}
            || ', "streak_days": ' || cast(streak_days as {{ dbt.type_string() }})
            || ', "streak_started_on": ' || {{ json_string(dbt.cast('streak_started_on', dbt.type_string())) }}
            || '}' as context

    from workout_days
    where first_live_event_id is not null

),

final as (

    select
        {{ nudge_trigger_columns() }}

    from qualifications
    where qualified_at <= {{ nudge_as_of() }}

)

select * from final
