{{ config(
    materialized='table',
    post_hook="{{ nudge_record_contact_watermark() }}"
) }}

-- Worked out once a tick for every per-contact model (macros/per_contact_incremental.sql):
-- finding who changed reads the whole event history, which each model doing it on its own
-- paid twice.

with

changed as (

    {{ nudge_all_contacts_to_rebuild() }}

),

final as (

    select distinct
        cast(contact_id as {{ dbt.type_string() }}) as contact_id,
        cast(wake as {{ dbt.type_string() }}) as wake,
        cast(event_name as {{ dbt.type_string() }}) as event_name
    from changed
    -- an anonymous id nobody has identified as yet belongs to no contact
    where contact_id is not null

)

select * from final
