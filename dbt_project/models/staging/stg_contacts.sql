{#- A table kept up to date, not a view: a tick reads it about 80 times (the per-contact models'
    checks of what was loaded, the send's candidates once per automation), and as a view each
    read joined every contact with the timezones again. A build re-reads only the contacts
    loaded since the last one, and those whose timezone as given the seed now spells
    differently; a full refresh re-reads everyone and gives the same rows. A column added here
    fails the build until a full refresh, as in the other incremental models, rather than being
    left out of the table. -#}
{{ config(
    materialized='incremental',
    unique_key='contact_id',
    incremental_strategy='delete+insert',
    on_schema_change='fail'
) }}

with

source as (

    select * from {{ source('raw', 'contacts') }}

),

timezones as (

    select * from {{ ref('iana_timezones') }}

),

{% if is_incremental() %}
kept_timezones as (

    -- every timezone as given, with the spelling this table gave it
    select distinct timezone_raw, timezone from {{ this }}

),

respelled_timezones as (

    -- the ones an edit of the seed spells differently now
    select kept_timezones.timezone_raw

    from kept_timezones
    left join timezones
        on {{ nudge_timezone_matches('kept_timezones.timezone_raw', 'timezones.timezone_name') }}
    where coalesce(timezones.timezone_name, 'UTC') <> kept_timezones.timezone

),
{% endif %}

changed as (

    select * from source
    {%- if is_incremental() %}
    -- loaded_at is when Nudge stored this version of the row, as the per-contact models'
    -- watermarks read it
    where source.loaded_at > (
            select coalesce(max(loaded_at), {{ nudge_timestamp_literal('1900-01-01 00:00:00') }}) from {{ this }}
        )
        or source.loaded_at is null
        or source.timezone in (select timezone_raw from respelled_timezones)
    {%- endif %}

),

renamed as (

    select
        changed.contact_id,
        -- addresses compare case-insensitively, and a blank address is no address
        nullif(lower(trim(changed.email)), '') as email,
        lower(trim(changed.status)) as status,
        changed.first_name,
        changed.last_name,
        -- local times (quiet hours, a streak's days) need a zone every engine and Python's
        -- zoneinfo know: a name from the list, in its canonical spelling, else UTC, so a
        -- missing, blank or misspelled zone never breaks a model or the send step
        coalesce(timezones.timezone_name, 'UTC') as timezone,
        changed.timezone as timezone_raw,
        changed.properties,
        changed.updated_at,
        -- when Nudge stored this version of the row: what changed since a build
        changed.loaded_at

    from changed
    left join timezones
        on {{ nudge_timezone_matches('changed.timezone', 'timezones.timezone_name') }}

)

select * from renamed
