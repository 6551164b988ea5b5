-- Which contact each anonymous id (a device, a browser) belongs to, and since when. The
-- clock is applied by the readers (int_events: a link counts once as_of reaches it), so
-- this map holds for every tick and int_events_stitched can keep what it stitched.

with

events as (

    select * from {{ ref('stg_events') }}

),

links as (

    -- any event that carries both ids links them; `identify` exists for exactly that
    select
        anonymous_id,
        contact_id,
        occurred_at,
        row_number() over (
            partition by anonymous_id
            order by occurred_at, event_id
        ) as link_number

    from events
    where anonymous_id is not null
        and contact_id is not null

),

final as (

    -- The earliest link wins, for good. The anonymous history (the install, the browsing
    -- before the signup) was made by whoever identified on that device first; a later
    -- link to another contact is a shared device changing hands, and it must not move
    -- events that earlier runs already attributed (and maybe emailed about) to someone
    -- else. A later link never changes an earlier answer, so every tick agrees with the
    -- ones before it.
    select
        anonymous_id,
        contact_id,
        occurred_at as identified_at

    from links
    where link_number = 1

)

select * from final
