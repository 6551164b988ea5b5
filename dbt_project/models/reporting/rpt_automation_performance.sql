with

messages as (

    select * from {{ source('nudge', 'messages') }}

),

decided as (

    select
        automation,
        cast({{ dbt.date_trunc('day', 'decided_at') }} as date) as decided_on,
        status,
        reason

    from messages
    -- a row gets decided_at when a tick first decides it; until then it belongs to no day
    where decided_at is not null

),

final as (

    select
        automation,
        decided_on,
        count(*) as qualified,
        count(case when status = 'sent' then 1 end) as sent,
        count(case when status = 'skipped' then 1 end) as skipped,
        count(case when status = 'held_out' then 1 end) as held_out,
        count(case when status = 'failed' then 1 end) as failed,
        count(case when status = 'unknown' then 1 end) as unknown,
        count(case when status = 'pending' then 1 end) as pending,
        count(case when status = 'held' then 1 end) as held_for_quiet_hours,
        count(case when status = 'skipped' and reason = 'not_subscribed' then 1 end) as skipped_not_subscribed,
        count(case when status = 'skipped' and reason = 'no_email' then 1 end) as skipped_no_email,
        count(case when status = 'skipped' and reason = 'stale' then 1 end) as skipped_stale,
        count(case when status = 'skipped' and reason = 'reentry' then 1 end) as skipped_reentry,
        count(case when status = 'skipped' and reason = 'template_error' then 1 end) as skipped_template_error,
        count(case when status = 'skipped' and reason = 'exited' then 1 end) as skipped_exited,
        count(case when status = 'skipped' and reason = 'capped' then 1 end) as skipped_capped,
        count(case when status = 'skipped' and reason = 'before_start' then 1 end) as skipped_before_start,
        count(case when status = 'skipped' and reason = 'unknown_contact' then 1 end) as skipped_unknown_contact,
        count(case when status = 'skipped' and reason = 'unsubscribed' then 1 end) as skipped_unsubscribed,
        count(case when status = 'skipped' and reason = 'suppressed' then 1 end) as skipped_suppressed,
        count(case when status = 'failed' and reason = 'attempts_exhausted' then 1 end) as failed_attempts_exhausted

    from decided
    group by automation, decided_on

)

select * from final
