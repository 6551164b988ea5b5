{% macro json_object(pairs) -%}
    {#- A JSON object text built from (key, SQL expression) pairs, keeping each value's
        JSON type where the engine can (numbers stay numbers, null stays null). -#}
    {%- if pairs | length == 0 -%}
        '{}'
    {%- else -%}
        {{ return(adapter.dispatch('json_object', 'nudge')(pairs)) }}
    {%- endif -%}
{%- endmacro %}

{% macro json_object_key_literal(key) -%}
    '{{ key | replace("'", "''") }}'
{%- endmacro %}

{% macro default__json_object(pairs) -%}
    {#- Concatenation, every value as a JSON string: portable, but numbers become strings. -#}
    ('{'
    {%- for key, expression in pairs %}
        || '{{ "," if not loop.first }}{{ tojson(key) | replace("'", "''") }}:'
        || coalesce({{ json_string('cast(' ~ expression ~ ' as ' ~ dbt.type_string() ~ ')') }}, 'null')
    {%- endfor %}
        || '}')
{%- endmacro %}

{% macro duckdb__json_object(pairs) -%}
    cast(json_object(
    {%- for key, expression in pairs %}
        {{ json_object_key_literal(key) }}, {{ expression }}{{ "," if not loop.last }}
    {%- endfor %}
    ) as varchar)
{%- endmacro %}

{% macro postgres__json_object(pairs) -%}
    cast(json_build_object(
    {%- for key, expression in pairs %}
        {{ json_object_key_literal(key) }}, {{ expression }}{{ "," if not loop.last }}
    {%- endfor %}
    ) as text)
{%- endmacro %}

{% macro snowflake__json_object(pairs) -%}
    to_json(object_construct_keep_null(
    {%- for key, expression in pairs %}
        {{ json_object_key_literal(key) }}, {{ expression }}{{ "," if not loop.last }}
    {%- endfor %}
    ))
{%- endmacro %}

{% macro bigquery__json_object(pairs) -%}
    to_json_string(json_object(
    {%- for key, expression in pairs %}
        {{ json_object_key_literal(key) }}, {{ expression }}{{ "," if not loop.last }}
    {%- endfor %}
    ))
{%- endmacro %}
