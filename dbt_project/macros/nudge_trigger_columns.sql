{% macro nudge_trigger_columns() -%}
    {#- The contract every trigger model returns, typed the same way on every adapter, so the
        send step reads any automation with one query. Select it from a relation that has
        contact_id, trigger_key, qualified_at and context. -#}
    cast(contact_id as {{ dbt.type_string() }}) as contact_id,
        cast(trigger_key as {{ dbt.type_string() }}) as trigger_key,
        cast(qualified_at as {{ dbt.type_timestamp() }}) as qualified_at,
        {{ nudge_due_at('qualified_at') }} as due_at,
        cast(context as {{ dbt.type_string() }}) as context
{%- endmacro %}
