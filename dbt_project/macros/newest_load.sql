{% macro nudge_newest_load(relation) -%}
    {#- The newest loaded_at in `relation`, as a timestamp literal for the compiled SQL (a
        constant lets the scan skip row groups loaded before it); 1900-01-01 when it is empty.
        A dbt unit test gives the relation as a CTE of the same query, which cannot be read
        ahead: there it is a scalar subquery. While parsing, nothing is read. -#}
    {%- set earliest = "cast('1900-01-01 00:00:00' as " ~ dbt.type_timestamp() ~ ")" -%}
    {%- if (relation | string).startswith('__dbt__cte__') -%}
        {{ return("(select coalesce(max(loaded_at), " ~ earliest ~ ") from " ~ relation ~ ")") }}
    {%- endif -%}
    {%- set newest = none -%}
    {%- if execute -%}
        {%- set newest = run_query(
            "select cast(max(loaded_at) as " ~ dbt.type_string() ~ ") from " ~ relation
        ).columns[0].values()[0] -%}
    {%- endif -%}
    {{ return("cast('" ~ newest ~ "' as " ~ dbt.type_timestamp() ~ ")" if newest else earliest) }}
{%- endmacro %}
