{{ nudge_per_contact_model(events=['signed_up']) }}

-- Per contact (macros/per_contact_incremental.sql), as int_first_signups is.

with

first_signups as (

    select * from {{ nudge_rows_to_rebuild(ref('int_first_signups')) }}

),

qualifications as (

    select
        contact_id,
        contact_id as trigger_key,
        signed_up_at as qualified_at,
        -- the welcome email may show whatever the product sent with the signup
        properties as context

    from first_signups
    where not is_syncing

),

final as (

    select
        {{ nudge_trigger_columns() }}

    from qualifications
    where qualified_at <= {{ nudge_as_of() }}

)

select * from final
