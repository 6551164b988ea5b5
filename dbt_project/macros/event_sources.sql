{#- Events from where they already are: the tables a Segment or RudderStack warehouse
    loader writes. Both write the same shape (tracks, identifies, one table per event
    name with the properties as columns), so one set of macros serves both. -#}

{% macro nudge_event_source() -%}
    {%- set event_source = var('nudge_event_source', 'landing') -%}
    {%- if event_source not in ['landing', 'segment', 'rudderstack'] -%}
        {{ exceptions.raise_compiler_error(
            "var nudge_event_source must be landing, segment or rudderstack, got '" ~ event_source ~ "'"
        ) }}
    {%- endif -%}
    {{ return(event_source) }}
{%- endmacro %}


{% macro nudge_is_event_source(event_source) -%}
    {#- For a vendor model's config(enabled=...): only the chosen source's models exist. -#}
    {{ return(var('nudge_event_source', 'landing') == event_source) }}
{%- endmacro %}


{% macro nudge_loader_property_columns(relation) -%}
    {#- The per-event table's own columns: its properties (context_* is the SDK's context). -#}
    {%- set reserved = ['id', 'anonymous_id', 'user_id', 'event', 'event_text', 'timestamp',
                        'original_timestamp', 'sent_at', 'received_at', 'uuid_ts', 'loaded_at',
                        'channel', 'uuid'] -%}
    {%- set properties = [] -%}
    {%- for column in adapter.get_columns_in_relation(relation) -%}
        {%- set name = column.name | lower -%}
        {%- if name not in reserved and not name.startswith('context_') -%}
            {%- do properties.append(column) -%}
        {%- endif -%}
    {%- endfor -%}
    {{ return(properties) }}
{%- endmacro %}


{% macro nudge_loader_timestamp(relation, column_name, table_alias) -%}
    {#- A loader's timestamp column as a UTC timestamp without zone, the way every model
        stores time. Loaders write timestamp with time zone on some warehouses and plain
        UTC timestamps on others; only the first needs converting. -#}
    {%- set expression = table_alias ~ '.' ~ column_name -%}
    {%- if execute -%}
        {%- for column in adapter.get_columns_in_relation(relation) if column.name | lower == column_name -%}
            {%- set data_type = column.data_type | lower -%}
            {%- if 'time zone' in data_type or 'timestamptz' in data_type
                   or 'timestamp_tz' in data_type or 'timestamp_ltz' in data_type -%}
                {{ return(utc_timestamp(expression)) }}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{ return('cast(' ~ expression ~ ' as ' ~ dbt.type_timestamp() ~ ')') }}
{%- endmacro %}

{% macro utc_timestamp(expression) -%}
    {{ return(adapter.dispatch('utc_timestamp', 'nudge')(expression)) }}
{%- endmacro %}

{% macro default__utc_timestamp(expression) -%}
    cast({{ expression }} as {{ dbt.type_timestamp() }})
{%- endmacro %}

{% macro duckdb__utc_timestamp(expression) -%}
    cast(timezone('UTC', {{ expression }}) as timestamp)
{%- endmacro %}

{% macro postgres__utc_timestamp(expression) -%}
    cast(({{ expression }} at time zone 'UTC') as timestamp)
{%- endmacro %}

{% macro snowflake__utc_timestamp(expression) -%}
    cast(convert_timezone('UTC', {{ expression }}) as timestamp_ntz)
{%- endmacro %}


{% macro nudge_loader_event_tables(tracks) -%}
    {#- The per-event tables listed in var nudge_event_tables that exist next to tracks.
        A loader creates an event's table only when the event first arrives, so a listed
        table that is missing is skipped (its events still come through tracks, with
        properties '{}') and said in the log. -#}
    {%- set found = [] -%}
    {%- if execute -%}
        {%- for name in var('nudge_event_tables', []) -%}
            {%- set relation = adapter.get_relation(tracks.database, tracks.schema, name) -%}
            {%- if relation is none -%}
                {%- do log("nudge: per-event table " ~ tracks.schema ~ "." ~ name
                           ~ " listed in nudge_event_tables does not exist (yet); its events get properties '{}'",
                           info=true) -%}
            {%- else -%}
                {%- do found.append(relation) -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{ return(found) }}
{%- endmacro %}


{% macro nudge_loader_event_columns(relation, table_alias, event_name, properties) -%}
    {#- A loader's call as stg_events' columns; the ids and the time mean the same in
        every loader table. -#}
        cast({{ table_alias }}.id as {{ dbt.type_string() }}) as event_id,
        -- the product's user id is Nudge's contact_id
        cast(nullif(trim({{ table_alias }}.user_id), '') as {{ dbt.type_string() }}) as contact_id,
        cast(nullif(trim({{ table_alias }}.anonymous_id), '') as {{ dbt.type_string() }}) as anonymous_id,
        cast({{ event_name }} as {{ dbt.type_string() }}) as event_name,
        {{ nudge_loader_timestamp(relation, 'timestamp', table_alias) }} as occurred_at,
        cast({{ properties }} as {{ dbt.type_string() }}) as properties,
        -- loaders carry live traffic; a backfill through them cannot be told apart, so false
        false as is_syncing,
        -- when the loader wrote the row to the warehouse (not when its API took the call, which
        -- can be long before): incremental models read what arrived since their last build
        {{ nudge_loader_timestamp(relation, 'uuid_ts', table_alias) }} as loaded_at
{%- endmacro %}


{% macro nudge_loader_tracks(event_source) -%}
{%- set tracks = source(event_source, 'tracks') -%}
{%- set event_tables = nudge_loader_event_tables(tracks) -%}

with

tracks as (

    select * from {{ tracks }}

),

{% for relation in event_tables %}
event_table_{{ loop.index }} as (

    select * from {{ relation }}

),

{% endfor %}
event_properties as (

    {% for relation in event_tables -%}
    {%- set table_alias = 'event_table_' ~ loop.index -%}
    {%- set pairs = [] -%}
    {%- for column in nudge_loader_property_columns(relation) -%}
        {%- do pairs.append((column.name | lower, table_alias ~ '.' ~ adapter.quote(column.name))) -%}
    {%- endfor %}
    -- {{ relation }}: its columns, but the loader's own, are the event's properties
    select
        {{ table_alias }}.id,
        {{ table_alias }}.received_at,
        {{ json_object(pairs) }} as properties
    from {{ table_alias }}

    union all

    {% endfor -%}
    -- the empty case keeps the shape when no per-event table is listed or exists
    select
        cast(null as {{ dbt.type_string() }}) as id,
        cast(null as {{ dbt.type_timestamp() }}) as received_at,
        cast(null as {{ dbt.type_string() }}) as properties
    from tracks
    where 1 = 0

),

unique_properties as (

    -- loaders deliver at least once: a message id may be stored twice
    select
        id,
        properties,
        row_number() over (partition by id order by received_at) as copy_number

    from event_properties

),

unique_tracks as (

    select
        tracks.*,
        row_number() over (partition by tracks.id order by tracks.received_at) as copy_number

    from tracks

),

final as (

    -- event is the loader's snake_case name, e.g. workout_completed for "Workout Completed"
    select
        {{ nudge_loader_event_columns(
            tracks, 'unique_tracks',
            event_name='unique_tracks.event',
            properties="coalesce(unique_properties.properties, '{}')"
        ) }}

    from unique_tracks
    left join unique_properties
        on unique_tracks.id = unique_properties.id
        and unique_properties.copy_number = 1
    where unique_tracks.copy_number = 1

)

select * from final
{%- endmacro %}


{% macro nudge_loader_identifies(event_source) -%}
{%- set identifies = source(event_source, 'identifies') -%}

with

identifies as (

    select * from {{ identifies }}

),

unique_identifies as (

    -- loaders deliver at least once: a message id may be stored twice
    select
        identifies.*,
        row_number() over (partition by identifies.id order by identifies.received_at) as copy_number

    from identifies

),

final as (

    -- an identify links the anonymous id to the user id; its traits are contact data,
    -- not event properties, and are left out
    select
        {{ nudge_loader_event_columns(
            identifies, 'unique_identifies', event_name="'identify'", properties="'{}'"
        ) }}

    from unique_identifies
    where unique_identifies.copy_number = 1

)

select * from final
{%- endmacro %}
