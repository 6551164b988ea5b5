-- Why rows did not go out, in long form: the per-day report has a column per known
-- reason, this one has a row per reason actually seen, so a reason added later (by a
-- new policy) shows up without a change here.

with

messages as (

    select * from {{ source('nudge', 'messages') }}

),

not_sent as (

    select
        automation,
        status,
        coalesce(reason, 'none') as reason

    from messages
    where status in ('skipped', 'failed', 'unknown')

),

final as (

    select
        automation,
        status,
        reason,
        count(*) as messages

    from not_sent
    group by automation, status, reason

)

select * from final
