{% macro generate_schema_name(custom_schema_name, node) -%}
    {#- Python reads staging.stg_contacts and triggers.trg_* by these exact names,
        so a folder's schema is never prefixed with the target's. -#}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
