with

frequent_exercisers as (

    {{ nudge_performers('workout_completed', at_least=3, within='7d', where='not is_syncing') }}

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
