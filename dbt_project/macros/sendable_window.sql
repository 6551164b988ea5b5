{#-
    A trigger row can depend on more than its contact's events while it can still be sent:
    trg_post_purchase's recommendations follow everyone's views and adds. Such a per-contact
    model rebuilds, besides its contacts with something new, every row that was sendable at
    its last build and every later one (an order that left the window since carries [] now).
-#}


{% macro nudge_sendable_since(as_of) -%}
    {#- Where the rows a send can still take at `as_of` (SQL) begin, by qualified_at: the
        automation's delay plus its send window before it; none without a send window. -#}
    {%- set automation = nudge_automation_config() -%}
    {%- if not automation.get('send_window') -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set delay = nudge_parse_duration(automation.get('delay', '0h')) -%}
    {%- set window = nudge_parse_duration(automation.get('send_window')) -%}
    {%- set since = dbt.dateadd(window.datepart, -window.amount, dbt.dateadd(delay.datepart, -delay.amount, as_of)) -%}
    {{ return("cast(" ~ since ~ " as " ~ dbt.type_timestamp() ~ ")") }}
{%- endmacro %}


{% macro nudge_sendable_at_last_build() -%}
    {#- In an incremental build, where the rows sendable at the last build began (SQL): they
        and every later row are built again. Every row without a send window; none when the
        whole model is rebuilt. -#}
    {%- set last = nudge_contact_watermark() -%}
    {%- if last is none -%}
        {{ return(none) }}
    {%- endif -%}
    {{ return(nudge_sendable_since(nudge_timestamp_literal(last.as_of))
              or nudge_timestamp_literal('1900-01-01 00:00:00')) }}
{%- endmacro %}


{% macro nudge_forget_rows_sendable_at_last_build() -%}
    {#- Pre-hook, beside nudge_forget_contacts_to_rebuild: the rows built again whoever their contact. -#}
    {%- set since = nudge_sendable_at_last_build() if is_incremental() else none -%}
    {%- if since is not none -%}
        {#- their contacts are rewritten too, for the data tests (nudge_record_contacts_rebuilt) -#}
        insert into {{ nudge_contacts_rebuilt_relation(this) }} (model_name, invocation_id, contact_id)
        {{ nudge_contacts_rebuilt_rows("select contact_id from " ~ this ~ " where qualified_at >= " ~ since) }};
        delete from {{ this }} where qualified_at >= {{ since }}
    {%- endif -%}
{%- endmacro %}
