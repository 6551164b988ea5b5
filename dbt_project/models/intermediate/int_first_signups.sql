with

events as (

    select * from {{ ref('int_events') }}

),

signups as (

    select
        contact_id,
        event_id,
        occurred_at,
        properties,
        is_syncing,
        row_number() over (
            partition by contact_id
            order by occurred_at, event_id
        ) as signup_number

    from events
    where event_name = 'signed_up'
        -- syncing history counts here: a contact whose first signup is history has
        -- already been welcomed elsewhere, whatever they do later
        and occurred_at <= {{ nudge_as_of() }}

),

final as (

    select
        contact_id,
        event_id as signup_event_id,
        occurred_at as signed_up_at,
        properties,
        is_syncing

    from signups
    where signup_number = 1

)

select * from final
