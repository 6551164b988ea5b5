{{ config(
    materialized='table',
    post_hook="{{ nudge_record_contact_watermark() }}"
) }}
{%- set names_read_for_each_reason = nudge_names_read_for_each_reason() %}

-- The per-contact models read these instead of int_events on an incremental build: picking a
-- few thousand contacts' events out of the whole history once a tick, not once a model. Only the
-- events of the names some model rebuilding the contact reads: writing the rows is most of the work.

with

contacts_to_rebuild as (

    select * from {{ ref('int_contacts_to_rebuild') }}

),

{%- if names_read_for_each_reason is none %}

names_to_rebuild as (

    -- a model reads every event: every event of the contact, whatever brought it
    select distinct contact_id from contacts_to_rebuild

),

{%- else %}

names_read_for_each_reason as (

    {{ names_read_for_each_reason }}

),

names_to_rebuild as (

    select distinct
        contacts_to_rebuild.contact_id,
        names_read_for_each_reason.needed_name as event_name

    from contacts_to_rebuild
    inner join names_read_for_each_reason
        on coalesce(contacts_to_rebuild.wake, '') = coalesce(names_read_for_each_reason.wake, '')
        and coalesce(contacts_to_rebuild.event_name, '') = coalesce(names_read_for_each_reason.event_name, '')

),

{%- endif %}

events as (

    select * from {{ ref('int_events') }}

),

final as (

    select events.*
    from events
    inner join names_to_rebuild
        on events.contact_id = names_to_rebuild.contact_id
        {%- if names_read_for_each_reason is not none %}
        and events.event_name = names_to_rebuild.event_name
        {%- endif %}

)

select * from final
