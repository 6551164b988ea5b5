with

source as (

    select * from {{ source('raw', 'events') }}

),

renamed as (

    select
        event_id,
        contact_id,
        name as event_name,
        occurred_at,
        properties,
        is_syncing

    from source

)

select * from renamed
