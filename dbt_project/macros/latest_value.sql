{% macro nudge_latest_value(value, at, tie_breaker) -%}
    {#- An aggregate: `value` from the row with the greatest (at, tie_breaker) among the rows
        where `value` is not null; null when there is none. One pass of a hash aggregate, where
        a row_number() per attribute sorted every row once for each (int_products: 13.2 s ->
        5.6 s at 10M events, the same table). -#}
    {{ return(adapter.dispatch('nudge_latest_value', 'nudge')(value, at, tie_breaker)) }}
{%- endmacro %}

{% macro default__nudge_latest_value(value, at, tie_breaker) -%}
    {#- max_by (Snowflake, Databricks, Trino) skips rows whose ordering is null. It orders by
        `at` alone: two rows at the same instant are not told apart by tie_breaker. -#}
    max_by({{ value }}, case when {{ value }} is not null then {{ at }} end)
{%- endmacro %}

{% macro duckdb__nudge_latest_value(value, at, tie_breaker) -%}
    arg_max({{ value }}, struct_pack(at := {{ at }}, tie_breaker := {{ tie_breaker }}))
        filter (where {{ value }} is not null)
{%- endmacro %}
