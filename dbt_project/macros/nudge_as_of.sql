{% macro nudge_as_of() -%}
    cast('{{ nudge_as_of_text() }}' as {{ dbt.type_timestamp() }})
{%- endmacro %}


{% macro nudge_as_of_text() -%}
    {#- The run's clock. Business logic never reads the wall clock, so a tick can be
        replayed and a test can stop time. -#}
    {#- Dagster passes the clock as the environment variable NUDGE_AS_OF, read only when
        executing: a --vars value that changes every hour would make dbt re-parse the whole
        project on every tick. The var as_of is for dbt unit tests and hand runs. -#}
    {%- set as_of = var('as_of', none) -%}
    {%- if (as_of is none or as_of == '') and execute -%}
        {%- set as_of = env_var('NUDGE_AS_OF', '') -%}
    {%- endif -%}
    {%- if as_of is none or as_of == '' -%}
        {%- set as_of = run_started_at -%}
    {%- endif -%}

    {%- if as_of is not string -%}
        {#- YAML turns an unquoted 2026-11-01 00:00:00 (as in a unit test's overrides) into a datetime. -#}
        {%- if as_of.tzinfo is defined and as_of.tzinfo is not none -%}
            {%- set as_of = as_of.astimezone(modules.pytz.utc) -%}
        {%- endif -%}
        {{ return(as_of.strftime('%Y-%m-%d %H:%M:%S')) }}
    {%- endif -%}

    {#- Timestamps are stored in UTC without a zone: an offset other than UTC would
        silently shift the clock, so it is refused rather than ignored. -#}
    {%- set pattern = '^([0-9]{4}-[0-9]{2}-[0-9]{2})[T ]([0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]{1,6})?)(Z|[+-]00:?00)?$' -%}
    {%- set parts = modules.re.match(pattern, as_of | trim) -%}
    {%- if not parts -%}
        {{ exceptions.raise_compiler_error(
            "var as_of must be a UTC timestamp like '2026-11-01 00:00:00', got '" ~ as_of ~ "'"
        ) }}
    {%- endif -%}
    {{ return(parts.group(1) ~ ' ' ~ parts.group(2)) }}
{%- endmacro %}
