{% macro json_get(column, key) -%}
    {{ return(adapter.dispatch('json_get', 'nudge')(column, key)) }}
{%- endmacro %}

{% macro default__json_get(column, key) -%}
    json_extract_string({{ column }}, '$.{{ key }}')
{%- endmacro %}

{% macro duckdb__json_get(column, key) -%}
    json_extract_string({{ column }}, '$.{{ key }}')
{%- endmacro %}

{% macro postgres__json_get(column, key) -%}
    (cast({{ column }} as json) ->> '{{ key }}')
{%- endmacro %}

{% macro snowflake__json_get(column, key) -%}
    json_extract_path_text({{ column }}, '{{ key }}')
{%- endmacro %}

{% macro bigquery__json_get(column, key) -%}
    json_value({{ column }}, '$.{{ key }}')
{%- endmacro %}


{% macro json_string(expression) -%}
    {{ return(adapter.dispatch('json_string', 'nudge')(expression)) }}
{%- endmacro %}

{% macro default__json_string(expression) -%}
    {#- Quotes and backslashes escaped by hand: enough for identifiers, not for control characters. -#}
    ('"' || replace(replace({{ expression }}, '\', '\\'), '"', '\"') || '"')
{%- endmacro %}

{% macro duckdb__json_string(expression) -%}
    cast(to_json(cast({{ expression }} as varchar)) as varchar)
{%- endmacro %}

{% macro postgres__json_string(expression) -%}
    cast(to_json(cast({{ expression }} as text)) as text)
{%- endmacro %}

{% macro snowflake__json_string(expression) -%}
    to_json(to_variant(cast({{ expression }} as varchar)))
{%- endmacro %}

{% macro bigquery__json_string(expression) -%}
    to_json_string(cast({{ expression }} as string))
{%- endmacro %}
