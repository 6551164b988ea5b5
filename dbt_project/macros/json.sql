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


{% macro json_fields(column, keys) -%}
    {#- Several top-level keys of JSON object text, read for json_field in one pass: DuckDB
        parses the text once for all of them, where json_get parses it once per key (most of
        int_products' build at 10M events). Elsewhere it is the text itself, read per key. -#}
    {{ return(adapter.dispatch('json_fields', 'nudge')(column, keys)) }}
{%- endmacro %}

{% macro default__json_fields(column, keys) -%}
    {{ column }}
{%- endmacro %}

{% macro duckdb__json_fields(column, keys) -%}
    json_extract_string({{ column }}, [{% for key in keys %}'$.{{ key }}'{{ ', ' if not loop.last }}{% endfor %}])
{%- endmacro %}


{% macro json_field(fields, keys, key) -%}
    {#- One key's value (as json_get gives it) from the column json_fields(column, keys) made. -#}
    {{ return(adapter.dispatch('json_field', 'nudge')(fields, keys, key)) }}
{%- endmacro %}

{% macro default__json_field(fields, keys, key) -%}
    {{ json_get(fields, key) }}
{%- endmacro %}

{% macro duckdb__json_field(fields, keys, key) -%}
    {{ fields }}[{{ keys.index(key) + 1 }}]
{%- endmacro %}
