with

first_signups as (

    select * from {{ ref('int_first_signups') }}

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
        cast(contact_id as {{ dbt.type_string() }}) as contact_id,
        cast(trigger_key as {{ dbt.type_string() }}) as trigger_key,
        cast(qualified_at as {{ dbt.type_timestamp() }}) as qualified_at,
        {{ nudge_due_at('qualified_at') }} as due_at,
        cast(context as {{ dbt.type_string() }}) as context

    from qualifications
    where qualified_at <= {{ nudge_as_of() }}

)

select * from final
