{{ config(materialized='incremental', incremental_strategy='append') }}

-- Append-only history of segment membership: each tick compares the members as of
-- as_of with the last recorded state and appends who entered and who exited.

with

members as (

    select * from {{ ref('segment_members') }}

),

{% if is_incremental() %}

recorded as (

    select * from {{ this }}

),

latest_tick as (

    select max(recorded_as_of) as recorded_as_of
    from recorded

),

ranked_changes as (

    select
        segment,
        contact_id,
        change_type,
        changed_at,
        -- one change per contact per segment per tick: the latest tick says where they stand
        row_number() over (
            partition by segment, contact_id
            order by recorded_as_of desc, changed_at desc
        ) as recency

    from recorded

),

recorded_state as (

    select
        segment,
        contact_id,
        change_type,
        changed_at

    from ranked_changes
    where recency = 1

),

entries as (

    select
        members.segment,
        members.contact_id,
        'entered' as change_type,
        -- an estimate of member_since may predate the exit recorded last: the history
        -- of one contact in one segment never goes back in time
        case
            when recorded_state.changed_at is not null and members.member_since < recorded_state.changed_at
                then recorded_state.changed_at
            else members.member_since
        end as changed_at

    from members
    left join recorded_state
        on members.segment = recorded_state.segment
        and members.contact_id = recorded_state.contact_id
    where recorded_state.contact_id is null
        or recorded_state.change_type = 'exited'

),

exits as (

    select
        recorded_state.segment,
        recorded_state.contact_id,
        'exited' as change_type,
        -- noticed at this tick; when exactly the condition stopped holding is not known
        {{ nudge_as_of() }} as changed_at

    from recorded_state
    left join members
        on recorded_state.segment = members.segment
        and recorded_state.contact_id = members.contact_id
    where recorded_state.change_type = 'entered'
        and members.contact_id is null

),

changes as (

    select * from entries
    union all
    select * from exits

),

new_changes as (

    select changes.*
    from changes
    cross join latest_tick
    -- a replayed or overlapping tick (as_of not after the last recorded one) adds nothing
    where latest_tick.recorded_as_of is null
        or {{ nudge_as_of() }} > latest_tick.recorded_as_of

),

{% else %}

new_changes as (

    -- a first run or a full refresh: every current member enters
    select
        segment,
        contact_id,
        'entered' as change_type,
        member_since as changed_at

    from members

),

{% endif %}

final as (

    select
        cast(segment as {{ dbt.type_string() }}) as segment,
        cast(contact_id as {{ dbt.type_string() }}) as contact_id,
        cast(change_type as {{ dbt.type_string() }}) as change_type,
        cast(changed_at as {{ dbt.type_timestamp() }}) as changed_at,
        {{ nudge_as_of() }} as recorded_as_of

    from new_changes

)

select * from final
