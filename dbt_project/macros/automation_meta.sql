{#-
    The automations as rows, for the reporting models: each trigger model's
    config.meta.nudge block read from dbt's graph, with the project's defaults
    (vars.nudge.defaults) under it, the way dagster_project/automations.py reads the
    same blocks for the send step. No Python and no seed to keep in step: the YAML is
    the one place an automation is declared.
-#}

{% macro nudge_duration_seconds(duration) -%}
    {#- A duration of the meta (30m, 48h, 7d, 2w) in seconds, for a window kept in a column. -#}
    {%- set parsed = nudge_parse_duration(duration) -%}
    {%- set seconds_per = {'second': 1, 'minute': 60, 'hour': 3600, 'day': 86400} -%}
    {{ return(parsed.amount * seconds_per[parsed.datepart]) }}
{%- endmacro %}


{% macro nudge_sql_text(value) -%}
    {#- A Jinja value as a SQL string literal, or null. -#}
    {%- if value is none -%}
        {{ return('cast(null as ' ~ dbt.type_string() ~ ')') }}
    {%- endif -%}
    {{ return("cast('" ~ (value | string | replace("'", "''")) ~ "' as " ~ dbt.type_string() ~ ")") }}
{%- endmacro %}


{% macro nudge_automation_rows() -%}
    {#- One select per automation: automation, model_name, category, holdout_percent,
        conversion_event, conversion_window (as written, e.g. 72h) and
        conversion_window_seconds; the conversion columns are null when the automation
        declares no goal. While dbt parses (execute is false) the graph is not complete,
        so an empty relation with the same columns stands in. -#}
    {%- set defaults = (var('nudge', {}) or {}).get('defaults', {}) or {} -%}
    {%- set rows = [] -%}
    {%- if execute -%}
        {%- for node in graph.nodes.values() | sort(attribute='name') -%}
            {%- set meta = (node.config.meta or {}) if node.config else {} -%}
            {%- set block = meta.get('nudge') or (node.meta or {}).get('nudge') -%}
            {%- if node.resource_type == 'model' and block is not none and node.name.startswith('trg_') -%}
                {%- set merged = {} -%}
                {%- do merged.update(defaults) -%}
                {%- do merged.update(block) -%}
                {%- set conversion = merged.get('conversion') -%}
                {%- set event = conversion.get('event') if conversion else none -%}
                {#- the send step's default window when a goal names no window -#}
                {%- set window = (conversion.get('window') or '72h') if conversion else none -%}
                {%- do rows.append(
                    'select '
                    ~ nudge_sql_text(node.name[4:]) ~ ' as automation, '
                    ~ nudge_sql_text(node.name) ~ ' as model_name, '
                    ~ nudge_sql_text(merged.get('category', 'marketing')) ~ ' as category, '
                    ~ 'cast(' ~ (merged.get('holdout_percent', 0) | float) ~ ' as ' ~ nudge_type_double() ~ ') as holdout_percent, '
                    ~ nudge_sql_text(event) ~ ' as conversion_event, '
                    ~ nudge_sql_text(window) ~ ' as conversion_window, '
                    ~ 'cast(' ~ (nudge_duration_seconds(window) if window else 'null') ~ ' as ' ~ dbt.type_int() ~ ') as conversion_window_seconds'
                ) -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {%- if rows | length == 0 -%}
        select
            {{ nudge_sql_text(none) }} as automation,
            {{ nudge_sql_text(none) }} as model_name,
            {{ nudge_sql_text(none) }} as category,
            cast(null as {{ nudge_type_double() }}) as holdout_percent,
            {{ nudge_sql_text(none) }} as conversion_event,
            {{ nudge_sql_text(none) }} as conversion_window,
            cast(null as {{ dbt.type_int() }}) as conversion_window_seconds
        where 1 = 0
    {%- else -%}
        {{ rows | join('\n        union all\n        ') }}
    {%- endif -%}
{%- endmacro %}


{% macro nudge_type_double() -%}
    {#- A double-precision float for rates and intervals. dbt.type_float() is right on
        Postgres, Snowflake and BigQuery, but DuckDB reads float as a 4-byte real. -#}
    {{ return(adapter.dispatch('nudge_type_double', 'nudge')()) }}
{%- endmacro %}

{% macro default__nudge_type_double() -%}
    {{ return(dbt.type_float()) }}
{%- endmacro %}

{% macro duckdb__nudge_type_double() -%}
    {{ return('double') }}
{%- endmacro %}
