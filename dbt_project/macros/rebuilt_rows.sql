{#-
    Data tests over what a build rewrote. A per-contact model's build deletes the rows of the
    contacts it rebuilds and appends their new ones; every other row is as the last build left
    it. When the model's tests all passed on that last build, the rows outside the rebuilt
    contacts hold no duplicate among themselves, so a duplicate now must involve a rebuilt row:
    a `unique` test need only look at the keys the rebuilt rows hold (over the whole table, for
    a key another contact's row might share). At 100 million events a tick's 58 tests took 2.1 s
    this way, against 18.2 s over every row.

    The memory is each model's row in nudge.model_builds (the tick writes it after each dbt
    build: the invocation, its status, its failed tests and how many tests passed). A test
    looks at every row instead when:
    - the model's previous build is not the one recorded there (a build by hand, a crash
      before the record), or it failed, or a test on it failed or did not run;
    - this build rebuilt everyone (the first build, a --full-refresh, a clock that moved back);
    - 24 hours of the clock have passed since the tests last looked at every row, so a row
      changed by hand, outside any build, is found within a day.

    The pre-hook writes the rebuilt contacts to nudge_contacts_rebuilt, beside the model, with
    a header row (contact_id null) saying which build this is, which one came before it, since
    when the tests have not looked at every row, and whether it rebuilt everyone. The send reads
    it too, for the trigger rows to look at (dagster_project/due_scope.py).
-#}


{% macro nudge_contacts_rebuilt_relation(beside) -%}
    {#- One header row per per-contact model's latest build, and a row per contact it rebuilt. -#}
    {{ return(api.Relation.create(database=beside.database, schema=beside.schema, identifier='nudge_contacts_rebuilt')) }}
{%- endmacro %}


{% macro nudge_record_contacts_rebuilt(contacts) -%}
    {#- Statements for the pre-hook: this build's contacts (a select of contact_id; none: every
        contact) replace the last build's, under a header carrying the last build's invocation. -#}
    {%- set relation = nudge_contacts_rebuilt_relation(this) -%}
    {%- set last_header -%}
        from {{ relation }} where model_name = '{{ this.identifier }}' and contact_id is null
    {%- endset -%}
    create table if not exists {{ relation }} (
        model_name {{ dbt.type_string() }},
        invocation_id {{ dbt.type_string() }},
        previous_invocation_id {{ dbt.type_string() }},
        all_rows_checked_as_of {{ dbt.type_timestamp() }},
        contact_id {{ dbt.type_string() }},
        rebuilt_everyone boolean
    );
    {#- a table made before the send read rebuilt_everyone (dagster_project/due_scope.py) -#}
    alter table {{ relation }} add column if not exists rebuilt_everyone boolean;
    insert into {{ relation }} (model_name, invocation_id, previous_invocation_id, all_rows_checked_as_of, rebuilt_everyone)
    select
        '{{ this.identifier }}',
        '{{ invocation_id }}',
        (select max(invocation_id) {{ last_header }}),
        {%- if contacts is none %}
        {{ nudge_as_of() }},
        true
        {%- else %}
        {#- when the tests last looked at every row, unless that was a day or more ago (or is
            later than now: a replay) -#}
        coalesce((
            select max(all_rows_checked_as_of) {{ last_header }}
                and all_rows_checked_as_of > {{ dbt.dateadd('hour', -24, nudge_as_of()) }}
                and all_rows_checked_as_of <= {{ nudge_as_of() }}
        ), {{ nudge_as_of() }}),
        false
        {%- endif %};
    {%- if contacts is not none %}
    insert into {{ relation }} (model_name, invocation_id, contact_id)
    {{ nudge_contacts_rebuilt_rows(contacts) }};
    {%- endif %}
    delete from {{ relation }} where model_name = '{{ this.identifier }}' and invocation_id <> '{{ invocation_id }}'
{%- endmacro %}


{% macro nudge_contacts_rebuilt_rows(contacts) -%}
    {#- The model_name, invocation_id and contact_id of nudge_contacts_rebuilt's rows for the
        contacts (a select of contact_id) this build rebuilds, each once. -#}
    select distinct '{{ this.identifier }}', '{{ invocation_id }}', contact_id
    from ({{ contacts }}) as rebuilt
    where contact_id is not null
{%- endmacro %}


{% macro nudge_contacts_rebuilt_now(relation=none) -%}
    {#- A select of the contacts this build of a model rebuilds (its pre-hook wrote them in this
        invocation). -#}
    {%- set relation = relation if relation is not none else this -%}
    select contact_id from {{ nudge_contacts_rebuilt_relation(relation) }}
    where model_name = '{{ relation.identifier }}'
        and invocation_id = '{{ invocation_id }}'
        and contact_id is not null
{%- endmacro %}


{% macro nudge_rebuilt_rows_only(model) -%}
    {#- For a data test on `model`: a condition on contact_id that holds for the rows this
        build rewrote, when the rest are known clean (see above); none when the test must
        look at every row. -#}
    {%- if not execute or flags.FULL_REFRESH or model is string -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set tested = [] -%}
    {%- for node in nudge_per_contact_models() if node.alias == model.identifier and node.schema == model.schema -%}
        {%- do tested.append(node.unique_id) -%}
    {%- endfor -%}
    {%- if not tested -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set rebuilt = nudge_contacts_rebuilt_relation(model) -%}
    {%- set builds = api.Relation.create(database=model.database, schema='nudge', identifier='model_builds') -%}
    {%- if not (nudge_relation_exists(rebuilt) and nudge_relation_exists(builds)) -%}
        {{ return(none) }}
    {%- endif -%}
    {#- every test on the model, as the tick counts the ones that passed (builds.py) -#}
    {%- set tests = [] -%}
    {%- for node in graph.nodes.values() if node.resource_type == 'test' and tested[0] in node.depends_on.nodes -%}
        {%- do tests.append(node.unique_id) -%}
    {%- endfor -%}
    {%- set clean_before = run_query(
        "select count(*) from " ~ rebuilt ~ " as header"
        ~ " inner join " ~ builds ~ " as build"
        ~ " on build.unique_id = '" ~ tested[0] ~ "'"
        ~ " and build.invocation_id = header.previous_invocation_id"
        ~ " and build.status = 'success' and build.failed_tests = ''"
        ~ " and build.tests_passed = " ~ tests | length
        ~ " where header.model_name = '" ~ model.identifier ~ "'"
        ~ " and header.contact_id is null"
        ~ " and header.invocation_id = '" ~ invocation_id ~ "'"
        ~ " and header.all_rows_checked_as_of < " ~ nudge_as_of()
    ).columns[0].values()[0] -%}
    {%- if clean_before == 0 -%}
        {{ return(none) }}
    {%- endif -%}
    {{ return("(contact_id is null or contact_id in (" ~ nudge_contacts_rebuilt_now(model) ~ "))") }}
{%- endmacro %}


{% macro nudge_duplicates(model, columns, nulls_count=true) -%}
    {#- The values of `columns` that more than one row of `model` holds, with how many rows:
        over every row, or over the keys of the rows this build rewrote when the others are
        known clean. `nulls_count=false`: a row with a null in the key is no duplicate (dbt's
        unique). -#}
    {%- set rebuilt = nudge_rebuilt_rows_only(model) -%}
    {%- set key = columns | join(', ') -%}
    {%- set conditions = [] -%}
    {%- if not nulls_count -%}
        {%- for column in columns -%}
            {%- do conditions.append(column ~ " is not null") -%}
        {%- endfor -%}
    {%- endif -%}
    {%- if rebuilt is not none and 'contact_id' in columns -%}
        {#- a contact's rows are rebuilt all together: a duplicate key of theirs is among them -#}
        {%- do conditions.append(rebuilt) -%}
    {%- elif rebuilt is not none and columns | length == 1 -%}
        {#- another contact's row may hold the same key -#}
        {%- do conditions.append(key ~ " in (select " ~ key ~ " from " ~ model ~ " where " ~ rebuilt ~ ")") -%}
    {%- endif %}
    select {{ key }}, count(*) as n_records
    from {{ model }}
    {%- if conditions %}
    where {{ conditions | join('\n        and ') }}
    {%- endif %}
    group by {{ key }}
    having count(*) > 1
{%- endmacro %}
