{% macro nudge_automation_config() -%}
    {#- The calling model's config.meta.nudge block (empty while parsing).
        Unit tests run the model's SQL without its config, so there it is empty too,
        unless the test overrides this macro: overrides: macros: {nudge_automation_config: {delay: 2h}}. -#}
    {%- if not execute -%}
        {{ return({}) }}
    {%- endif -%}
    {%- set meta = config.get('meta') or {} -%}
    {#- The project's defaults (vars.nudge.defaults in dbt_project.yml) under the model's own
        block: the send step merges them the same way, so SQL and Python agree on the delay. -#}
    {%- set merged = {} -%}
    {%- do merged.update((var('nudge', {}) or {}).get('defaults') or {}) -%}
    {%- do merged.update(meta.get('nudge') or {}) -%}
    {{ return(merged) }}
{%- endmacro %}


{% macro nudge_due_at(qualified_at, delay=none) -%}
    {#- The delay lives in the YAML next to the rest of the automation, so the SQL and
        the send step can never disagree about it. -#}
    {%- if delay is none -%}
        {%- set delay = nudge_automation_config().get('delay', '0h') -%}
    {%- endif -%}
    {{ nudge_add_duration(qualified_at, delay) }}
{%- endmacro %}
