{#-
    Per-contact incremental models: a model whose rows for a contact depend only on that
    contact's own events (and contact row) is rebuilt, each tick, for the contacts whose
    answer may have changed, not for everyone in the history.

    A model opts in with `{{ nudge_per_contact_model(events=[...], wakes={...}) }}` at its top
    (incremental, appended, nudge_forget_contacts_to_rebuild as its pre-hook,
    nudge_record_contact_watermark as its post-hook, the event names it reads as
    meta.nudge_events and its time rules as meta.nudge_wakes) and reads its events with
    `select * from {{ nudge_events_to_rebuild() }}`, which holds only the events of those names:
    a name the model leaves out it never sees, on a full build as on an incremental one (and
    in its dbt unit tests). The pre-hook deletes the rows of the contacts to rebuild, the model
    appends their new ones, and the post-hook records the clock and the load times it was
    built at.

    Which contacts: those with an event loaded since the last build; those with an event
    (or an identify of their anonymous id) that the clock reached since the last build;
    every contact that ever shared an anonymous id with a newly loaded event (a late
    identify can move that id's history from one contact to another); those whose contact
    row was loaded since (a new time zone, a new plan); and, for a model whose answer
    changes when time passes (meta.nudge_wakes: an event name to a duration, e.g.
    {'product_viewed': '2h'}), the contacts with such an event that the clock passed the
    duration after since the last build. A clock that moved back (a replay of an earlier
    hour) rebuilds everyone, so a replay gives the answer a full refresh gives
    (tests/integration/test_incremental_models.py).

    Finding those contacts and their events costs a pass over every event, so a tick does it
    once for all the models: int_contacts_to_rebuild holds the contacts changed since the
    oldest of the models' last builds (more contacts than one model needs is still its
    answer: a contact with nothing new is rebuilt the same), each with the time rule that
    brought it, and int_events_to_rebuild their events. A model rebuilds the contacts every
    model shares and those its own rules brought: a contact whose last workout turned 30 days
    old is rebuilt in seg_dormant, not in the carts. Of the reasons every model shares, a new
    event (loaded, or reached by the clock, or stitched by an identify the clock reached) is
    tagged with its name, and a model that declares its event names rebuilds only the contacts
    with new events of those: a login rebuilds no cart. A model that reads another per-contact
    model's rows (nudge_rows_to_rebuild) must declare that model's names and time rules too,
    which nudge_require_upstream_reasons checks. A model reads them when they were built at its
    clock with every load it sees (a tick builds them first); otherwise (a model built on
    its own after a new load) it works out its own contacts.
-#}


{% macro nudge_contact_watermarks_relation(beside=none) -%}
    {#- One row per opted-in model: what it was last built with. Kept beside the models (in
        the schema of `beside`, this model's by default). -#}
    {%- set model_relation = beside if beside is not none else this -%}
    {{ return(api.Relation.create(database=model_relation.database, schema=model_relation.schema, identifier='nudge_contact_watermarks')) }}
{%- endmacro %}


{% macro nudge_relation_exists(relation) -%}
    {{ return(adapter.get_relation(relation.database, relation.schema, relation.identifier) is not none) }}
{%- endmacro %}


{% macro nudge_contact_watermark(clocked=true) -%}
    {#- The last build's {as_of, events_loaded_until, contacts_loaded_until}, or none
        when the whole model is to be rebuilt. `clocked=false`: the model's rows do not
        depend on the clock, so one that moved back rebuilds nothing. -#}
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
    {%- if clocked and last[0][:19] > nudge_as_of_text()[:19] -%}
        {{ return(none) }}
    {%- endif -%}
    {#- Before every model recorded its contact loads, one that did not read stg_contacts
        left them empty: it had nothing to rebuild for a contact row. -#}
    {{ return({
        'as_of': last[0],
        'events_loaded_until': last[1] or '1900-01-01 00:00:00',
        'contacts_loaded_until': last[2],
    }) }}
{%- endmacro %}


{% macro nudge_timestamp_literal(text) -%}
    cast('{{ text }}' as {{ dbt.type_timestamp() }})
{%- endmacro %}


{% macro nudge_contacts_changed_since(last, wakes, stitched, contacts, tagged=false) -%}
    {#- A select of the contact ids whose rows may differ from those built at `last` (a
        watermark), for models with the time rules `wakes` (a list of [event name, duration]). Each reason is its own branch
        with a plain range on one column, so the scan skips the row groups outside it (an
        OR of them, or a duration added to the column, reads every event). Loads compare
        with `>`: each has its own instant, and the newest the last build saw may be a bulk
        backfill of the whole history. `tagged`: a second column, wake, says which time
        rule (nudge_wake_key) brought the contact, null for the reasons every model shares; a
        third, event_name, the name of the new event that brought it, null for the reasons
        every model rebuilds whatever it reads (a relink, a contact row) and for a time rule. -#}
    {%- set no_tag = "cast(null as " ~ dbt.type_string() ~ ")" -%}
    {%- set shared_reason = (", " ~ no_tag ~ " as wake, " ~ no_tag ~ " as event_name") if tagged else "" -%}
    {#- a new event changes only its own name's answers -#}
    {%- set event_reason = (", " ~ no_tag ~ " as wake, event_name") if tagged else "" -%}
    {%- set last_as_of = nudge_timestamp_literal(last.as_of) -%}
    {%- set loaded_until = nudge_timestamp_literal(last.events_loaded_until) -%}
    {%- set new_load -%}
        (loaded_at > {{ loaded_until }} or loaded_at is null)
    {%- endset -%}
    select coalesce(contact_id, stitched_contact_id) as contact_id{{ event_reason }}
    from {{ stitched }}
    where loaded_at > {{ loaded_until }}

    union

    select coalesce(contact_id, stitched_contact_id) as contact_id{{ event_reason }}
    from {{ stitched }}
    where loaded_at is null

    union

    select coalesce(contact_id, stitched_contact_id) as contact_id{{ event_reason }}
    from {{ stitched }}
    where occurred_at > {{ last_as_of }} and occurred_at <= {{ nudge_as_of() }}

    union

    select coalesce(contact_id, stitched_contact_id) as contact_id{{ event_reason }}
    from {{ stitched }}
    where identified_at > {{ last_as_of }} and identified_at <= {{ nudge_as_of() }}

    union

    select contact_id{{ shared_reason }}
    from {{ stitched }}
    where contact_id is not null
        and anonymous_id in (
            select anonymous_id
            from {{ stitched }}
            where anonymous_id is not null
                and {{ new_load }}
        )
    {#- a time rule: the clock passed `duration` after the event, occurred_at + duration in
        (last, now], written as a range of occurred_at -#}
    {%- for event_name, duration in wakes | sort %}
    {%- set parsed = nudge_parse_duration(duration) %}

    union

    select coalesce(contact_id, stitched_contact_id) as contact_id
        {%- if tagged %}, '{{ nudge_wake_key(event_name, duration) }}' as wake, {{ no_tag }} as event_name{% endif %}
    from {{ stitched }}
    where event_name = '{{ event_name }}'
        and occurred_at > cast({{ dbt.dateadd(parsed.datepart, -parsed.amount, last_as_of) }} as {{ dbt.type_timestamp() }})
        and occurred_at <= cast({{ dbt.dateadd(parsed.datepart, -parsed.amount, nudge_as_of()) }} as {{ dbt.type_timestamp() }})
    {%- endfor %}
    {%- if last.contacts_loaded_until %}

    union

    select contact_id{{ shared_reason }}
    from {{ contacts }}
    where loaded_at > {{ nudge_timestamp_literal(last.contacts_loaded_until) }}
        or loaded_at is null
    {%- endif %}
{%- endmacro %}


{% macro nudge_wake_key(event_name, duration) -%}
    {#- One time rule as text, the same for 7d and 1w: how int_contacts_to_rebuild tags the
        contacts a rule brought, and how a model picks the ones its own rules bring. -#}
    {%- set parsed = nudge_parse_duration(duration) -%}
    {{ return((event_name ~ '|' ~ parsed.amount ~ ' ' ~ parsed.datepart) | replace("'", "''")) }}
{%- endmacro %}


{% macro nudge_shared_contacts_of_this_model() -%}
    {#- The contacts of int_contacts_to_rebuild this model rebuilds: those every model shares
        (of the new events, those of the names it reads) and those its own time rules brought,
        not the ones another model's rules brought (a contact turning dormant changes no cart). -#}
    {%- set keys = [] -%}
    {%- for event_name, duration in nudge_wakes() -%}
        {%- do keys.append("'" ~ nudge_wake_key(event_name, duration) ~ "'") -%}
    {%- endfor -%}
    {%- set names = nudge_events_read() -%}
    select contact_id from {{ ref('int_contacts_to_rebuild') }}
    where {% if names is none %}wake is null
        {%- else %}(wake is null and (event_name is null or event_name in ({{ nudge_event_name_list(names) }})))
        {%- endif %}
        {%- if keys %} or wake in ({{ keys | join(', ') }}){% endif %}
{%- endmacro %}


{% macro nudge_events_read() -%}
    {#- The event names this model reads, from meta.nudge_events (nudge_per_contact_model's
        events), or none: every event. -#}
    {{ return((config.get('meta') or {}).get('nudge_events')) }}
{%- endmacro %}


{% macro nudge_of_names_read(relation) -%}
    {#- `relation` (events) narrowed to this model's event names, when it declares them. -#}
    {%- set names = nudge_events_read() -%}
    {%- if names is none -%}
        {{ return(relation) }}
    {%- endif -%}
    {{ return("(select * from " ~ relation ~ " where event_name in (" ~ nudge_event_name_list(names) ~ "))") }}
{%- endmacro %}


{% macro nudge_require_upstream_reasons(relation) -%}
    {#- A model reading another per-contact model's rows by contact must rebuild every contact
        that model rebuilds: declare at least its event names and its time rules. dbt knows the
        graph only when it runs, so this fails the build, with what to add, rather than parsing. -#}
    {%- if not execute or relation is none -%}
        {{ return('') }}
    {%- endif -%}
    {%- set names = nudge_events_read() -%}
    {%- set own_wakes = [] -%}
    {%- for event_name, duration in nudge_wakes() -%}
        {%- do own_wakes.append(nudge_wake_key(event_name, duration)) -%}
    {%- endfor -%}
    {%- for node in nudge_per_contact_models() if node.alias == relation.identifier and node.schema == relation.schema -%}
        {%- set meta = node.config.meta or {} -%}
        {%- set upstream_names = meta.get('nudge_events') -%}
        {%- set problems = [] -%}
        {%- if names is not none and upstream_names is none -%}
            {%- do problems.append("it reads every event, so " ~ model.name ~ " must declare no events either") -%}
        {%- elif names is not none -%}
            {%- set missing = upstream_names | reject('in', names) | list -%}
            {%- if missing -%}
                {%- do problems.append("add the event names " ~ missing | join(', ') ~ " to its events") -%}
            {%- endif -%}
        {%- endif -%}
        {%- for event_name, duration in (meta.get('nudge_wakes') or {}).items() -%}
            {%- if nudge_wake_key(event_name, duration) not in own_wakes -%}
                {%- do problems.append("add the time rule {'" ~ event_name ~ "': '" ~ duration ~ "'} to its wakes") -%}
            {%- endif -%}
        {%- endfor -%}
        {%- if problems -%}
            {{ exceptions.raise_compiler_error(
                model.name ~ " reads the rows of " ~ node.name ~ " for the contacts to rebuild, but would not"
                ~ " rebuild every contact " ~ node.name ~ " rebuilds: " ~ problems | join('; ')
                ~ " (nudge_per_contact_model at the top of " ~ model.original_file_path ~ ")"
            ) }}
        {%- endif -%}
    {%- endfor -%}
    {{ return('') }}
{%- endmacro %}


{% macro nudge_wakes() -%}
    {#- This model's time rules, from meta.nudge_wakes (an event name to a duration), as a
        list of [event name, duration]. -#}
    {{ return(((config.get('meta') or {}).get('nudge_wakes') or {}).items() | list) }}
{%- endmacro %}


{% macro nudge_shared_rebuild_is_current() -%}
    {#- int_contacts_to_rebuild and int_events_to_rebuild hold this build's contacts: both
        were built at this run's clock and saw every event and contact loaded by now. -#}
    {%- set relation = nudge_contact_watermarks_relation(ref('int_contacts_to_rebuild')) -%}
    {%- if not nudge_relation_exists(relation) -%}
        {{ return(false) }}
    {%- endif -%}
    {%- set newest_event = "(select coalesce(max(loaded_at), " ~ nudge_timestamp_literal('1900-01-01 00:00:00') ~ ") from " ~ ref('int_events_stitched') ~ ")" -%}
    {%- set newest_contact = "(select coalesce(max(loaded_at), " ~ nudge_timestamp_literal('1900-01-01 00:00:00') ~ ") from " ~ ref('stg_contacts') ~ ")" -%}
    {%- set current = run_query(
        "select count(*) from " ~ relation
        ~ " where model_name in ('int_contacts_to_rebuild', 'int_events_to_rebuild')"
        ~ " and as_of = " ~ nudge_as_of()
        ~ " and events_loaded_until >= " ~ newest_event
        ~ " and contacts_loaded_until >= " ~ newest_contact
    ).columns[0].values()[0] -%}
    {{ return(current == 2) }}
{%- endmacro %}


{% macro nudge_events_to_rebuild() -%}
    {#- What a per-contact model reads its events from: int_events on a full build, else the
        events of the contacts to rebuild. -#}
    {{ return(nudge_rows_to_rebuild(ref('int_events') if this is none else none)) }}
{%- endmacro %}


{% macro nudge_rows_to_rebuild(relation) -%}
    {#- What a per-contact model reads `relation`'s rows from (a relation with a contact_id
        column; none: int_events): all of it on a full build, else the rows of the contacts
        to rebuild. -#}
    {#- The refs make the dependencies known when dbt parses (the shared tables build first);
        a unit test (no `this`) reads only the inputs it gives, and always everyone. -#}
    {%- if this is none -%}
        {{ return(relation if relation is not none else nudge_of_names_read(ref('int_events'))) }}
    {%- endif -%}
    {%- do nudge_require_upstream_reasons(relation) -%}
    {%- set everyone = ref('int_events') -%}
    {%- set shared_events = ref('int_events_to_rebuild') -%}
    {%- set shared_contacts = ref('int_contacts_to_rebuild') -%}
    {%- set stitched = ref('int_events_stitched') -%}
    {%- set contacts = ref('stg_contacts') -%}
    {%- set read = relation if relation is not none else everyone -%}
    {%- set last = nudge_contact_watermark() -%}
    {%- if last is none -%}
        {%- set rows = read -%}
    {%- elif nudge_shared_rebuild_is_current() -%}
        {%- set read = shared_events if relation is none else read -%}
        {%- set rows = "(select * from " ~ read ~ " where contact_id in (" ~ nudge_shared_contacts_of_this_model() ~ "))" -%}
    {%- else -%}
        {%- set rows = "(select * from " ~ read ~ " where contact_id in ("
            ~ nudge_contacts_changed_since(last, nudge_wakes(), stitched, contacts) ~ "))" -%}
    {%- endif -%}
    {{ return(rows if relation is not none else nudge_of_names_read(rows)) }}
{%- endmacro %}


{% macro nudge_forget_contacts_to_rebuild() -%}
    {#- Pre-hook: the rows this build replaces, all of them when it rebuilds everyone, with the
        contacts recorded for the data tests (nudge_record_contacts_rebuilt). -#}
    {%- set last = nudge_contact_watermark() if is_incremental() else none -%}
    {%- if last is none -%}
        {{ nudge_record_contacts_rebuilt(none) }}
        {%- if is_incremental() %};
    delete from {{ this }}
        {%- endif -%}
    {%- else -%}
        {%- if nudge_shared_rebuild_is_current() -%}
            {%- set contacts = nudge_shared_contacts_of_this_model() -%}
        {%- else -%}
            {%- set contacts = nudge_contacts_changed_since(last, nudge_wakes(), ref('int_events_stitched'), ref('stg_contacts')) -%}
        {%- endif -%}
        {{ nudge_record_contacts_rebuilt(contacts) }};
    delete from {{ this }} where contact_id in ({{ nudge_contacts_rebuilt_now() }})
    {%- endif -%}
{%- endmacro %}


{% macro nudge_record_contact_watermark(events_from='int_events_stitched', contacts_from='stg_contacts') -%}
    {#- Post-hook: the clock and load times this build saw, for the next build to start from.
        The loads are read from the models named, which the model must depend on already (a
        model upstream of int_events_stitched reads stg_events; none records no time). -#}
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
        {% for loads_from in [events_from, contacts_from] -%}
            {%- if loads_from is none -%}
                cast(null as {{ dbt.type_timestamp() }})
            {%- else -%}
                (select max(loaded_at) from {{ ref(loads_from) }})
            {%- endif -%}
            {{- ',' if not loop.last }}
        {% endfor %}
{%- endmacro %}


{% macro nudge_per_contact_models() -%}
    {#- The per-contact models of the project: incremental models that read int_events_to_rebuild. -#}
    {%- set shared = [] -%}
    {%- for node in graph.nodes.values() if node.resource_type == 'model' and node.name == 'int_events_to_rebuild' -%}
        {%- do shared.append(node.unique_id) -%}
    {%- endfor -%}
    {%- set models = [] -%}
    {%- for node in graph.nodes.values() -%}
        {%- if node.resource_type == 'model' and node.config.materialized == 'incremental'
            and (shared | select('in', node.depends_on.nodes) | list) -%}
            {%- do models.append(node) -%}
        {%- endif -%}
    {%- endfor -%}
    {{ return(models) }}
{%- endmacro %}


{% macro nudge_all_contacts_to_rebuild() -%}
    {#- int_contacts_to_rebuild's select: the contacts changed since the oldest last build of
        the per-contact models that will build incrementally, for all their time rules. A
        model that rebuilds everyone (its first build, a --full-refresh, a clock that moved
        back) does not read it and does not count. -#}
    {%- set none_changed -%}
        select
            cast(null as {{ dbt.type_string() }}) as contact_id,
            cast(null as {{ dbt.type_string() }}) as wake,
            cast(null as {{ dbt.type_string() }}) as event_name
        where 1 = 0
    {%- endset -%}
    {%- set stitched = ref('int_events_stitched') -%}
    {%- set contacts = ref('stg_contacts') -%}
    {%- if not execute or flags.FULL_REFRESH -%}
        {{ return(none_changed) }}
    {%- endif -%}
    {#- every model's rules, each event and duration once (7d and 1w are one rule), and where
        each model keeps its watermark (beside it, in its own schema) -#}
    {%- set wakes = {} -%}
    {%- set watermarks = {} -%}
    {%- for node in nudge_per_contact_models() -%}
        {%- set relation = nudge_contact_watermarks_relation(api.Relation.create(database=node.database, schema=node.schema)) -%}
        {%- do watermarks.setdefault(relation | string, {'relation': relation, 'names': []})['names'].append("'" ~ node.alias ~ "'") -%}
        {%- for event_name, duration in ((node.config.meta or {}).get('nudge_wakes') or {}).items() -%}
            {%- do wakes.update({nudge_wake_key(event_name, duration): [event_name, duration]}) -%}
        {%- endfor -%}
    {%- endfor -%}
    {%- set builds = [] -%}
    {%- for kept in watermarks.values() if nudge_relation_exists(kept.relation) -%}
        {%- do builds.append(
            "select as_of, events_loaded_until, contacts_loaded_until from " ~ kept.relation
            ~ " where model_name in (" ~ kept.names | join(', ') ~ ")"
        ) -%}
    {%- endfor -%}
    {%- if not builds -%}
        {{ return(none_changed) }}
    {%- endif -%}
    {%- set oldest = run_query(
        "select cast(min(as_of) as " ~ dbt.type_string() ~ "), cast(min(events_loaded_until) as " ~ dbt.type_string()
        ~ "), cast(min(contacts_loaded_until) as " ~ dbt.type_string() ~ ") from ("
        ~ builds | join(' union all ') ~ ") as builds where as_of <= " ~ nudge_as_of()
    ).rows[0] -%}
    {%- if oldest[0] is none -%}
        {{ return(none_changed) }}
    {%- endif -%}
    {%- set last = {
        'as_of': oldest[0],
        'events_loaded_until': oldest[1] or '1900-01-01 00:00:00',
        'contacts_loaded_until': oldest[2],
    } -%}
    {{ return(nudge_contacts_changed_since(last, wakes.values() | list, stitched, contacts, tagged=true)) }}
{%- endmacro %}


{% macro nudge_per_contact_model(events=none, wakes=none) -%}
    {#- A model's config as a per-contact incremental model, with the event names it reads
        (meta.nudge_events; none: every event) and its time rules (meta.nudge_wakes). -#}
    {%- if events is not none -%}
        {%- set events = [events] if events is string else events | list -%}
        {%- if events | length == 0 -%}
            {{ exceptions.raise_compiler_error(
                model.name ~ ": nudge_per_contact_model(events=...) names no event; leave it out to read every event") }}
        {%- endif -%}
        {%- set unread = (wakes or {}).keys() | reject('in', events) | list -%}
        {%- if unread -%}
            {{ exceptions.raise_compiler_error(
                model.name ~ ": a time rule on " ~ unread | join(', ') ~ ", an event it does not read: add it to events") }}
        {%- endif -%}
    {%- endif -%}
    {{ config(
        materialized='incremental',
        incremental_strategy='append',
        on_schema_change='fail',
        pre_hook="{{ nudge_forget_contacts_to_rebuild() }}",
        post_hook="{{ nudge_record_contact_watermark() }}",
        meta={'nudge_wakes': wakes or {}, 'nudge_events': events}
    ) }}
{%- endmacro %}
