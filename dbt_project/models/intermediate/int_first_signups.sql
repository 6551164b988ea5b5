with

first_signups as (

    -- syncing history counts here: a contact whose first signup is history has already been
    -- welcomed elsewhere, whatever they do later
    {{ nudge_first_occurrence('signed_up') }}

),

final as (

    select
        contact_id,
        event_id as signup_event_id,
        occurred_at as signed_up_at,
        properties,
        is_syncing

    from first_signups

)

select * from final
