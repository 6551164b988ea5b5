{% macro nudge_to_local(timestamp_utc, timezone) -%}
    {#- Timestamps are stored in UTC without a zone; "which day was it for the contact"
        needs their wall-clock time. Engines spell the conversion differently, so it is
        dispatched. timezone is an SQL expression (a column or a quoted literal) naming an
        IANA zone; the result is a timestamp without a zone, in that zone's local time. -#}
    {{ return(adapter.dispatch('nudge_to_local', 'nudge')(timestamp_utc, timezone)) }}
{%- endmacro %}

{% macro default__nudge_to_local(timestamp_utc, timezone) -%}
    {#- DuckDB (ICU) and Postgres: declare the naive value UTC, then read it in the zone. -#}
    ((cast({{ timestamp_utc }} as {{ dbt.type_timestamp() }}) at time zone 'UTC') at time zone ({{ timezone }}))
{%- endmacro %}

{% macro snowflake__nudge_to_local(timestamp_utc, timezone) -%}
    {#- The three-argument form takes a timestamp_ntz in the source zone and returns one in the target zone. -#}
    convert_timezone('UTC', {{ timezone }}, cast({{ timestamp_utc }} as timestamp_ntz))
{%- endmacro %}

{% macro bigquery__nudge_to_local(timestamp_utc, timezone) -%}
    datetime(cast({{ timestamp_utc }} as timestamp), {{ timezone }})
{%- endmacro %}

{% macro spark__nudge_to_local(timestamp_utc, timezone) -%}
    {#- Spark and Databricks keep naive timestamps as UTC instants: shift them to the zone's wall clock. -#}
    from_utc_timestamp({{ timestamp_utc }}, {{ timezone }})
{%- endmacro %}


{% macro nudge_timezone_matches(given, timezone_name) -%}
    {#- Whether a timezone as given names a zone of the seed iana_timezones: ignoring case and
        surrounding blanks. stg_contacts spells a contact's zone by it and, on an incremental
        build, finds by it the zones an edited seed spells differently: one rule for both. -#}
    lower(trim({{ given }})) = lower({{ timezone_name }})
{%- endmacro %}
