with

source as (

    select * from {{ source('raw', 'contacts') }}

),

renamed as (

    select
        contact_id,
        -- addresses compare case-insensitively, and a blank address is no address
        nullif(lower(trim(email)), '') as email,
        lower(trim(status)) as status,
        first_name,
        last_name,
        timezone,
        properties,
        updated_at

    from source

)

select * from renamed
