{{ nudge_first_per_key_model('anonymous_id', clocked=false) }}
{%- set last = nudge_first_per_key_watermark() -%}

-- Which contact each anonymous id (a device, a browser) belongs to, and since when. The
-- clock is applied by the readers (int_events: a link counts once as_of reaches it), so
-- this map holds for every tick and int_events_stitched can keep what it stitched. A build
-- reads only the events loaded since the last one, with the links it holds for the same ids.

with

events as (

    select * from {{ nudge_events_since(last) }}

),

new_links as (

    -- any event that carries both ids links them; `identify` exists for exactly that
    select
        anonymous_id,
        contact_id,
        occurred_at,
        event_id

    from events
    where anonymous_id is not null
        and contact_id is not null

),

links as (

    select * from new_links

    {% if last is not none %}
    union all

    -- the winner so far of each id a new event links: a late event may be earlier still
    select
        anonymous_id,
        contact_id,
        identified_at as occurred_at,
        event_id

    from {{ this }}
    where anonymous_id in (select anonymous_id from new_links)
    {% endif %}

),

ranked as (

    select
        *,
        row_number() over (
            partition by anonymous_id
            order by occurred_at, event_id
        ) as link_number

    from links

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
        occurred_at as identified_at,
        event_id

    from ranked
    where link_number = 1

)

select * from final
