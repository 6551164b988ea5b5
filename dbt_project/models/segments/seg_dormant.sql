{%- set dormancy = nudge_dormancy() -%}
{%- set activity_events = dormancy.activity_events -%}
{%- set dormant_after = dormancy.dormant_after -%}
{#- Per contact (macros/per_contact_incremental.sql): a contact's dormancy changes with their
    own events, and when 30 days pass after an activity. -#}
{{ nudge_per_contact_model(events=activity_events, wakes=nudge_dormancy_wakes()) }}

with

events as (

    select * from {{ nudge_events_to_rebuild() }}

),

last_activity as (

    -- imported history is not the contact's own recent doing: only live events count
    {{ nudge_last_occurrence(activity_events, where='not is_syncing', events='events') }}

),

final as (

    select
        cast(contact_id as {{ dbt.type_string() }}) as contact_id,
        -- they became dormant the moment the 30 quiet days were up
        {{ nudge_add_duration('occurred_at', dormant_after) }} as member_since,
        cast(occurred_at as {{ dbt.type_timestamp() }}) as last_active_at,
        cast(event_name as {{ dbt.type_string() }}) as last_activity

    from last_activity
    where {{ nudge_not_performed(activity_events, within=dormant_after, where='not is_syncing', events='events') }}

)

select * from final
