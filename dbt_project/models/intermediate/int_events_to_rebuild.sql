{{ config(
    materialized='table',
    post_hook="{{ nudge_record_contact_watermark() }}"
) }}

-- The per-contact models read these instead of int_events on an incremental build: picking a
-- few thousand contacts' events out of the whole history once a tick, not once a model.

with

contacts_to_rebuild as (

    -- a contact once, whichever rules brought it
    select distinct contact_id from {{ ref('int_contacts_to_rebuild') }}

),

events as (

    select * from {{ ref('int_events') }}

),

final as (

    select events.*
    from events
    inner join contacts_to_rebuild
        on events.contact_id = contacts_to_rebuild.contact_id

)

select * from final
