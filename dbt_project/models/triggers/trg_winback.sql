{#- Per contact (macros/per_contact_incremental.sql), with seg_dormant's event names and time
    rules: a contact's entries into seg_dormant are recorded when their dormancy changes, which is
    when seg_dormant rebuilds them, and the context reads only their own workouts. The entries come
    through segment_membership_changes, which is not a per-contact model, so
    nudge_require_upstream_reasons cannot check this: both take their rules from nudge_dormancy. -#}
{{ nudge_per_contact_model(events=nudge_dormancy().activity_events, wakes=nudge_dormancy_wakes()) }}

with

dormancy_entries as (

    -- one row per inactive stretch: each entry into seg_dormant qualifies once
    {{ nudge_segment_entries('seg_dormant', rows=nudge_rows_to_rebuild(ref('segment_membership_changes'))) }}

),

workouts as (

    -- only the live workouts of contacts who went quiet: this is read twice, and DuckDB
    -- materializes such a CTE whole (all of int_events, when it was imported whole)
    select * from {{ nudge_events_to_rebuild() }}
    where event_name = 'workout_completed'
        and not is_syncing
        and contact_id in (select contact_id from dormancy_entries)

),

last_workouts as (

    {{ nudge_last_occurrence('workout_completed', events='workouts') }}

),

workout_counts as (

    -- what they had done before they went quiet
    select
        dormancy_entries.trigger_key,
        count(workouts.event_id) as workouts_completed

    from dormancy_entries
    left join workouts
        on dormancy_entries.contact_id = workouts.contact_id
        and workouts.occurred_at <= dormancy_entries.qualified_at
    group by dormancy_entries.trigger_key

),

qualifications as (

    select
        dormancy_entries.contact_id,
        dormancy_entries.trigger_key,
        dormancy_entries.qualified_at,
        '{"segment": ' || {{ json_string('dormancy_entries.segment') }}
            || ', "entered_at": ' || {{ json_string('cast(dormancy_entries.entered_at as ' ~ dbt.type_string() ~ ')') }}
            || ', "workouts_completed": ' || cast(workout_counts.workouts_completed as {{ dbt.type_string() }})
            -- the workout that was their last before going quiet, if any; a workout after
            -- the entry means they came back, which the send step handles as an exit
            || ', "last_workout": ' || coalesce(
                case
                    when last_workouts.occurred_at <= dormancy_entries.qualified_at
                        then last_workouts.properties
                end,
                'null'
            )
            || '}' as context

    from dormancy_entries
    left join last_workouts
        on dormancy_entries.contact_id = last_workouts.contact_id
    inner join workout_counts
        on dormancy_entries.trigger_key = workout_counts.trigger_key

),

final as (

    select
        {{ nudge_trigger_columns() }}

    from qualifications
    where qualified_at <= {{ nudge_as_of() }}

)

select * from final
