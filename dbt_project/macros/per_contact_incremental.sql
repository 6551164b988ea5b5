{#-
    Per-contact incremental models: a model whose rows for a contact depend only on that
    contact's own events (and contact row) is rebuilt, each tick, for the contacts whose
    answer may have changed, not for everyone in the history.

    A model opts in with the config at the top of int_carts.sql (incremental, appended,
    nudge_forget_contacts_to_rebuild as its pre-hook, nudge_record_contact_watermark as
    its post-hook)
    and filters what it reads with `where {{ nudge_contact_in_rebuild('contact_id') }}`.
    The pre-hook deletes those contacts' rows, the model appends their new ones, and the
    post-hook records the clock and the load time it was built at.

    Which contacts: those with an event loaded since the last build; those with an event
    (or an identify of their anonymous id) that the clock reached since the last build;
    every contact that ever shared an anonymous id with a newly loaded event (a late
    identify can move that id's history from one contact to another); and, for a model
    that reads stg_contacts (`with_contacts=true`), those whose contact row was loaded
    since; and, for a model whose answer changes when time passes (`wakes`: an event name to
    a duration, e.g. {'product_viewed': '2h'}), the contacts with such an event that the
    clock passed the duration after since the last build. A clock that moved back (a
    replay of an earlier hour) rebuilds everyone, so a replay gives the answer a full
    refresh gives (tests/integration/test_incremental_models.py).
-#}


{% macro nudge_contact_watermarks_relation() -%}
    {#- One row per opted-in model: what it was last built with. Kept beside the models. -#}
    {{ return(api.Relation.create(database=this.database, schema=this.schema, identifier='nudge_contact_watermarks')) }}
{%- endmacro %}


{% macro nudge_contact_watermark() -%}
    {#- The last build's {as_of, events_loaded_until, contacts_loaded_until}, or none
        when the whole model is to be rebuilt. -#}
    {#- A dbt unit test has no relation of its own (`this` is none): it sees everything. -#}
    {%- if not execute or this is none or not is_incremental() -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set relation = nudge_contact_watermarks_relation() -%}
    {%- if adapter.get_relation(relation.database, relation.schema, relation.identifier) is none -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set rows = run_query(
        "select cast(as_of as " ~ dbt.type_string() ~ "), cast(events_loaded_until as " ~ dbt.type_string()
        ~ "), cast(contacts_loaded_until as " ~ dbt.type_string() ~ ") from " ~ relation
        ~ " where model_name = '" ~ this.identifier ~ "'"
    ).rows -%}
    {%- if rows | length == 0 or rows[0][0] is none -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set last = rows[0] -%}
    {#- A clock that moved back: rows built later than this run's as_of must go. -#}
    {%- if last[0][:19] > nudge_as_of_text()[:19] -%}
        {{ return(none) }}
    {%- endif -%}
    {{ return({
        'as_of': last[0],
        'events_loaded_until': last[1] or '1900-01-01 00:00:00',
        'contacts_loaded_until': last[2] or '1900-01-01 00:00:00',
    }) }}
{%- endmacro %}


{% macro nudge_contacts_to_rebuild(with_contacts=false, wakes=none) -%}
    {#- A select of the contact ids whose rows this build replaces (see the top of the file).
        Loads compare with `>`: each has its own instant, and the newest the last build saw
        may be a bulk backfill of the whole history. -#}
    {%- set last = nudge_contact_watermark() -%}
    {#- The refs make the dependencies known when dbt parses; a unit test (no `this`) reads
        only the inputs it gives, and always everyone. -#}
    {%- set stitched = ref('int_events_stitched') if this is not none else none -%}
    {%- set contacts = ref('stg_contacts') if with_contacts and this is not none else none -%}
    {%- set ts = dbt.type_timestamp() -%}
    {%- set last_as_of = "cast('" ~ last.as_of ~ "' as " ~ ts ~ ")" if last else none -%}
    {%- set loaded_until = "cast('" ~ last.events_loaded_until ~ "' as " ~ ts ~ ")" if last else none -%}
    select coalesce(contact_id, stitched_contact_id) as contact_id
    from {{ stitched }}
    where loaded_at > {{ loaded_until }}
        or loaded_at is null
        or (occurred_at > {{ last_as_of }} and occurred_at <= {{ nudge_as_of() }})
        or (identified_at > {{ last_as_of }} and identified_at <= {{ nudge_as_of() }})

    union

    select contact_id
    from {{ stitched }}
    where contact_id is not null
        and anonymous_id in (
            select anonymous_id
            from {{ stitched }}
            where anonymous_id is not null
                and (loaded_at > {{ loaded_until }} or loaded_at is null)
        )
    {%- for event_name, duration in (wakes or {}).items() %}

    union

    select coalesce(contact_id, stitched_contact_id) as contact_id
    from {{ stitched }}
    where event_name = '{{ event_name }}'
        and {{ nudge_add_duration('occurred_at', duration) }} > {{ last_as_of }}
        and {{ nudge_add_duration('occurred_at', duration) }} <= {{ nudge_as_of() }}
    {%- endfor %}
    {%- if with_contacts %}

    union

    select contact_id
    from {{ contacts }}
    where loaded_at > cast('{{ last.contacts_loaded_until if last else '1900-01-01 00:00:00' }}' as {{ ts }})
        or loaded_at is null
    {%- endif %}
{%- endmacro %}


{% macro nudge_contact_in_rebuild(contact_column, with_contacts=false, wakes=none) -%}
    {#- A predicate for the model's reads: everyone on a full build, else the contacts to rebuild. -#}
    {%- set scope = nudge_contacts_to_rebuild(with_contacts, wakes) -%}
    {%- if nudge_contact_watermark() is none -%}
        (1 = 1)
    {%- else -%}
        {{ contact_column }} in ({{ scope }})
    {%- endif -%}
{%- endmacro %}


{% macro nudge_forget_contacts_to_rebuild(with_contacts=false, wakes=none) -%}
    {#- Pre-hook: the rows this build replaces, all of them when it rebuilds everyone. -#}
    {%- if is_incremental() -%}
        {%- if nudge_contact_watermark() is none -%}
            delete from {{ this }}
        {%- else -%}
            delete from {{ this }} where contact_id in ({{ nudge_contacts_to_rebuild(with_contacts, wakes) }})
        {%- endif -%}
    {%- endif -%}
{%- endmacro %}


{% macro nudge_record_contact_watermark(with_contacts=false) -%}
    {#- Post-hook: the clock and load times this build saw, for the next build to start from. -#}
    {%- set relation = nudge_contact_watermarks_relation() -%}
    create table if not exists {{ relation }} (
        model_name {{ dbt.type_string() }},
        as_of {{ dbt.type_timestamp() }},
        events_loaded_until {{ dbt.type_timestamp() }},
        contacts_loaded_until {{ dbt.type_timestamp() }}
    );
    delete from {{ relation }} where model_name = '{{ this.identifier }}';
    insert into {{ relation }}
    select
        '{{ this.identifier }}',
        {{ nudge_as_of() }},
        (select max(loaded_at) from {{ ref('int_events_stitched') }}),
        {% if with_contacts %}(select max(loaded_at) from {{ ref('stg_contacts') }}){% else %}cast(null as {{ dbt.type_timestamp() }}){% endif %}
{%- endmacro %}
