{% macro nudge_latest_value(value, at, tie_breaker, present=none) -%}
    {#- An aggregate: `value` from the row with the greatest (at, tie_breaker) among the rows
        where `present` (by default `value` itself) is not null; null when there is none. One
        pass of a hash aggregate, where a row_number() per attribute sorted every row once for
        each (int_products: 13.2 s -> 5.6 s at 10M events, the same table). With `present`,
        it takes that row's `at` or `tie_breaker`: the key a later rollup compares. -#}
    {{ return(adapter.dispatch('nudge_latest_value', 'nudge')(value, at, tie_breaker, present or value)) }}
{%- endmacro %}

{% macro default__nudge_latest_value(value, at, tie_breaker, present) -%}
    {#- max_by (Snowflake, Databricks, Trino) skips rows whose ordering is null. It orders by
        `at` alone: two rows at the same instant are not told apart by tie_breaker. -#}
    max_by({{ value }}, case when {{ present }} is not null then {{ at }} end)
{%- endmacro %}

{% macro duckdb__nudge_latest_value(value, at, tie_breaker, present) -%}
    {#- The greatest (at, tie_breaker, present) struct, and the field asked for: cheaper than
        arg_max with a struct key (about a third of the time at 2M groups), and asking for a
        row's value, time and tie-breaker repeats one aggregate, which DuckDB computes once. -#}
    {%- set field = 'at' if value == at and present != value else 'tie_breaker' if value == tie_breaker and present != value else 'value' -%}
    struct_extract(
        max(struct_pack(at := {{ at }}, tie_breaker := {{ tie_breaker }}, value := {{ present }}))
            filter (where {{ present }} is not null),
        '{{ field }}'
    )
{%- endmacro %}
