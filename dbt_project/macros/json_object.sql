{% macro json_object(pairs) -%}
    {#- A JSON object text built from (key, SQL expression) pairs, keeping each value's
        JSON type where the engine can (numbers stay numbers, null stays null). -#}
    {%- if pairs | length == 0 -%}
        '{}'
    {%- else -%}
        {{ return(adapter.dispatch('json_object', 'nudge')(pairs)) }}
    {%- endif -%}
{%- endmacro %}

{% macro json_object_arguments(pairs) -%}
    {#- 'key1', expression1, 'key2', expression2 ...: the argument list the engines' own
        object builders share; a key's single quotes doubled for the SQL literal. -#}
    {%- for key, expression in pairs %}
        '{{ key | replace("'", "''") }}', {{ expression }}{{ "," if not loop.last }}
    {%- endfor %}
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
    cast(json_object({{ json_object_arguments(pairs) }}
    ) as varchar)
{%- endmacro %}

{% macro postgres__json_object(pairs) -%}
    cast(json_build_object({{ json_object_arguments(pairs) }}
    ) as text)
{%- endmacro %}

{% macro snowflake__json_object(pairs) -%}
    to_json(object_construct_keep_null({{ json_object_arguments(pairs) }}
    ))
{%- endmacro %}

{% macro bigquery__json_object(pairs) -%}
    to_json_string(json_object({{ json_object_arguments(pairs) }}
    ))
{%- endmacro %}
