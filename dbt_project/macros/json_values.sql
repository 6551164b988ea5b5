{% macro json_unnest_array(relation, columns, json_column, key) -%}
    {#- A select statement (for a CTE) with one row per element of the JSON array at the
        top-level key `key` of `json_column` in `relation`: the listed `columns`, then
        `element` (the element as JSON text) and `element_index` (its 0-based position).
        A row whose key is missing or not an array gives no rows. Engines unnest JSON with
        different table functions, so it is dispatched. -#}
    {{ return(adapter.dispatch('json_unnest_array', 'nudge')(relation, columns, json_column, key)) }}
{%- endmacro %}

{% macro default__json_unnest_array(relation, columns, json_column, key) -%}
    {{ exceptions.raise_compiler_error(
        "json_unnest_array has no implementation for the " ~ adapter.type() ~ " adapter: add "
        ~ adapter.type() ~ "__json_unnest_array to dbt_project/macros/json_values.sql"
    ) }}
{%- endmacro %}

{% macro duckdb__json_unnest_array(relation, columns, json_column, key) -%}
    {#- `[*]` gives the array's elements, and an empty list for anything else (an object, a
        number, a missing key). The text is parsed once: json_each over json_type and
        json_extract parsed it three times, and was three times slower. -#}
    select
        {%- for column in columns %}
        source_rows.{{ column }},
        {%- endfor %}
        cast(unnest(source_rows.nudge_elements) as varchar) as element,
        cast(generate_subscripts(source_rows.nudge_elements, 1) - 1 as integer) as element_index
    from (
        select *, json_extract({{ json_column }}, '$.{{ key }}[*]') as nudge_elements
        from {{ relation }}
    ) as source_rows
{%- endmacro %}

{% macro postgres__json_unnest_array(relation, columns, json_column, key) -%}
    select
        {%- for column in columns %}
        source_rows.{{ column }},
        {%- endfor %}
        cast(elements.value as text) as element,
        cast(elements.ordinality - 1 as integer) as element_index
    from {{ relation }} as source_rows
    -- json_array_elements raises on anything but an array
    cross join lateral json_array_elements(
        case
            when json_typeof(cast(source_rows.{{ json_column }} as json) -> '{{ key }}') = 'array'
                then cast(source_rows.{{ json_column }} as json) -> '{{ key }}'
            else cast('[]' as json)
        end
    ) with ordinality as elements(value, ordinality)
{%- endmacro %}

{% macro snowflake__json_unnest_array(relation, columns, json_column, key) -%}
    select
        {%- for column in columns %}
        source_rows.{{ column }},
        {%- endfor %}
        to_json(elements.value) as element,
        elements.index as element_index
    from {{ relation }} as source_rows,
        lateral flatten(input => parse_json(source_rows.{{ json_column }}):{{ key }}) as elements
    where is_array(parse_json(source_rows.{{ json_column }}):{{ key }})
{%- endmacro %}

{% macro bigquery__json_unnest_array(relation, columns, json_column, key) -%}
    select
        {%- for column in columns %}
        source_rows.{{ column }},
        {%- endfor %}
        element,
        element_index
    from {{ relation }} as source_rows
    cross join unnest(json_extract_array(source_rows.{{ json_column }}, '$.{{ key }}')) as element
        with offset as element_index
{%- endmacro %}


{% macro json_number(column, key) -%}
    {#- The number under a top-level key of JSON object text (a JSON number or a numeric
        string), or null when the key is missing or holds anything else: a product priced
        "free" must not fail the build. -#}
    {{ return(text_number(json_get(column, key))) }}
{%- endmacro %}

{% macro text_number(expression) -%}
    {#- Text read as a number, or null when it is not one (json_number's rule, for a value
        already taken out of its JSON). Dispatched because only some engines have try_cast. -#}
    {{ return(adapter.dispatch('text_number', 'nudge')(expression)) }}
{%- endmacro %}

{% macro default__text_number(expression) -%}
    {{ dbt.safe_cast(expression, dbt.type_numeric()) }}
{%- endmacro %}

{% macro duckdb__text_number(expression) -%}
    try_cast({{ expression }} as {{ dbt.type_numeric() }})
{%- endmacro %}

{% macro postgres__text_number(expression) -%}
    case
        when {{ expression }} ~ '^\s*-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?\s*$'
            then cast({{ expression }} as {{ dbt.type_numeric() }})
    end
{%- endmacro %}

{% macro snowflake__text_number(expression) -%}
    try_to_decimal({{ expression }}, 28, 6)
{%- endmacro %}
