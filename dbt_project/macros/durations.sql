{% macro nudge_parse_duration(duration) -%}
    {#- Same grammar as dagster_project/durations.py (30m, 1h, 48h, 7d, 2w, or a bare 0),
        so one YAML value means one thing to the SQL and to the send step. -#}
    {%- set dateparts = {'s': 'second', 'm': 'minute', 'h': 'hour', 'd': 'day', 'w': 'day'} -%}
    {%- set text = (duration ~ '') | trim -%}
    {%- if text == '0' -%}
        {{ return({'amount': 0, 'datepart': 'second'}) }}
    {%- endif -%}
    {%- set parts = modules.re.match('^([0-9]+)\s*([smhdw])$', text) -%}
    {%- if not parts -%}
        {{ exceptions.raise_compiler_error(
            "'" ~ duration ~ "' is not a duration: write a whole number and a unit s, m, h, d or w, e.g. 30m, 1h, 48h, 7d"
        ) }}
    {%- endif -%}
    {%- set amount = parts.group(1) | int -%}
    {#- weeks as days: not every adapter's dateadd knows a week -#}
    {%- if parts.group(2) == 'w' -%}
        {%- set amount = amount * 7 -%}
    {%- endif -%}
    {{ return({'amount': amount, 'datepart': dateparts[parts.group(2)]}) }}
{%- endmacro %}


{% macro nudge_add_duration(timestamp_expression, duration) -%}
    {%- set parsed = nudge_parse_duration(duration) -%}
    {%- if parsed.amount == 0 -%}
        cast({{ timestamp_expression }} as {{ dbt.type_timestamp() }})
    {%- else -%}
        cast({{ dbt.dateadd(parsed.datepart, parsed.amount, timestamp_expression) }} as {{ dbt.type_timestamp() }})
    {%- endif -%}
{%- endmacro %}
