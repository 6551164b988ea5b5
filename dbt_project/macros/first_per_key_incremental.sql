{#-
    First-per-key incremental models: a model with one row per key (an anonymous id, an email
    address) that is the first of the key's events by (occurred_at, event_id) never needs the
    history again. A build reads the events loaded since its last build, and, when the rows
    depend on the clock, the events the clock reached since; it ranks them with the rows it
    holds for the same keys, and replaces those keys' rows (delete+insert on the key). The
    first build, a --full-refresh and (for a clocked model) a clock that moved back read every
    event. The watermark is kept with the per-contact models' (nudge_contact_watermarks).
-#}


{% macro nudge_first_per_key_model(key, clocked=true) -%}
    {#- A model's config as a first-per-key incremental model. It reads stg_events, the only
        event model upstream of int_identity_map, so its loads are recorded from there. -#}
    {{ config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=key,
        on_schema_change='append_new_columns',
        pre_hook="{{ nudge_forget_keys_before_reading_everything() }}",
        post_hook="{{ nudge_record_contact_watermark(events_from='stg_events', contacts_from=none) }}",
        meta={'nudge_clocked': clocked}
    ) }}
{%- endmacro %}


{% macro nudge_first_per_key_is_clocked() -%}
    {#- Whether this model's rows depend on the clock (nudge_first_per_key_model's `clocked`). -#}
    {{ return((config.get('meta') or {}).get('nudge_clocked', true)) }}
{%- endmacro %}


{% macro nudge_first_per_key_watermark() -%}
    {#- This model's last build (nudge_contact_watermark), or none when it reads every event. -#}
    {{ return(nudge_contact_watermark(clocked=nudge_first_per_key_is_clocked())) }}
{%- endmacro %}


{% macro nudge_forget_keys_before_reading_everything() -%}
    {#- Pre-hook: a build that reads every event again (a clock moved back, a first build
        after an upgrade) replaces every row, not only the keys it finds: an address whose
        only failure is now after the clock must lose its row. -#}
    {%- if is_incremental() and nudge_first_per_key_watermark() is none -%}
        delete from {{ this }}
    {%- endif -%}
{%- endmacro %}


{% macro nudge_events_since(last) -%}
    {#- The stg_events rows a first-per-key model reads: every one when `last` is none, else
        those loaded since `last` and, for a clocked model, those loaded before it that the
        clock reached since. Each branch is a plain range on one column, so the scan skips the
        row groups outside it (see nudge_contacts_changed_since). -#}
    {%- set events = ref('stg_events') -%}
    {%- if last is none -%}
        {{ return(events) }}
    {%- endif -%}
    {%- set loaded_until = nudge_timestamp_literal(last.events_loaded_until) -%}
    {%- set since -%}
        (
            select * from {{ events }} where loaded_at > {{ loaded_until }}
            union all
            select * from {{ events }} where loaded_at is null
            {%- if nudge_first_per_key_is_clocked() %}
            union all
            select * from {{ events }}
            where occurred_at > {{ nudge_timestamp_literal(last.as_of) }}
                and occurred_at <= {{ nudge_as_of() }}
                and loaded_at <= {{ loaded_until }}
            {%- endif %}
        )
    {%- endset -%}
    {{ return(since) }}
{%- endmacro %}
