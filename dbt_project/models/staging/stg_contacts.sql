with

source as (

    select * from {{ source('raw', 'contacts') }}

),

timezones as (

    select * from {{ ref('iana_timezones') }}

),

renamed as (

    select
        source.contact_id,
        -- addresses compare case-insensitively, and a blank address is no address
        nullif(lower(trim(source.email)), '') as email,
        lower(trim(source.status)) as status,
        source.first_name,
        source.last_name,
        -- local times (quiet hours, a streak's days) need a zone every engine and Python's
        -- zoneinfo know: a name from the list, in its canonical spelling, else UTC, so a
        -- missing, blank or misspelled zone never breaks a model or the send step
        coalesce(timezones.timezone_name, 'UTC') as timezone,
        source.timezone as timezone_raw,
        source.properties,
        source.updated_at,
        -- when Nudge stored this version of the row: what changed since a build
        source.loaded_at

    from source
    left join timezones
        on lower(trim(source.timezone)) = lower(timezones.timezone_name)

)

select * from renamed
