{#-
    Behavioral conditions over int_events (one row per event that happened by as_of,
    attributed to a known contact), for segments and trigger models.

    Two shapes:
    - predicates (nudge_performed, nudge_not_performed) go in a where clause and are
      correlated with the calling query's contact column;
    - relations (nudge_first_occurrence, nudge_last_occurrence, nudge_performers,
      nudge_a_then_no_b) are select statements to use as the body of a CTE.

    A `where` argument is a SQL predicate on the event's own columns (event_id,
    event_name, occurred_at, properties, is_syncing), e.g. "not is_syncing" or
    "json_get('properties', 'platform') = 'ios'" written with the json_get macro.

    Portable SQL only: window functions, exists subqueries, dbt.dateadd through
    nudge_add_duration; no adapter-only syntax.
-#}


{% macro nudge_event_name_list(event_name) -%}
    {#- 'a' or ['a', 'b'] as a quoted SQL list for an in (...) clause. Event names from
        Segment or RudderStack may hold spaces or quotes ("Order Completed"). -#}
    {%- set names = [event_name] if event_name is string else event_name -%}
    {%- if names is none or names | length == 0 -%}
        {{ exceptions.raise_compiler_error("a behavioral macro needs at least one event name") }}
    {%- endif -%}
    {%- set quoted = [] -%}
    {%- for name in names -%}
        {%- do quoted.append("'" ~ (name | string | replace("'", "''")) ~ "'") -%}
    {%- endfor -%}
    {{ return(quoted | join(', ')) }}
{%- endmacro %}


{% macro nudge_events_relation(events=none) -%}
    {#- The events every behavioral model reads; another relation with the same columns
        may be passed, e.g. a CTE name. -#}
    {{ return(events if events is not none else ref('int_events')) }}
{%- endmacro %}


{% macro nudge_check_at_least(macro_name, at_least) -%}
    {%- if at_least is not number or at_least < 1 or at_least != (at_least | int) -%}
        {{ exceptions.raise_compiler_error(
            macro_name ~ ": at_least must be a whole number of at least 1, got '" ~ at_least ~ "'"
        ) }}
    {%- endif -%}
{%- endmacro %}


{% macro nudge_matching_events(event_name, where=none, events=none) -%}
    {#- The from and where clauses of the events of the given names by as_of that satisfy
        the where predicate. int_events stops at as_of; another relation passed as events
        may not. -#}
    from {{ nudge_events_relation(events) }}
    where event_name in ({{ nudge_event_name_list(event_name) }})
        and occurred_at <= {{ nudge_as_of() }}
    {%- if where %}
        and ({{ where }})
    {%- endif %}
{%- endmacro %}


{% macro nudge_subtract_duration(timestamp_expression, duration) -%}
    {#- The start of a look-back window: the mirror of nudge_add_duration. -#}
    {%- set parsed = nudge_parse_duration(duration) -%}
    {%- if parsed.amount == 0 -%}
        cast({{ timestamp_expression }} as {{ dbt.type_timestamp() }})
    {%- else -%}
        cast({{ dbt.dateadd(parsed.datepart, -parsed.amount, timestamp_expression) }} as {{ dbt.type_timestamp() }})
    {%- endif -%}
{%- endmacro %}


{% macro nudge_performed(event_name, within=none, relative_to=none, direction='before', at_least=1, where=none, contact_id='contact_id', events=none) -%}
    {#- True when the contact of the calling row performed the event (at least
        at_least times) in the window: (anchor - within, anchor] looking 'before', or
        (anchor, anchor + within] looking 'after'; the anchor is relative_to (a column
        of the calling query) or as_of. Without within the window is open on that side.
        Events after as_of never count. -#}
    {%- set event_columns = ['event_id', 'event_name', 'occurred_at', 'properties', 'is_syncing', 'performer_id'] -%}
    {%- if relative_to is not none and (relative_to | trim | lower) in event_columns -%}
        {#- Inside the subquery a bare name means the event's own column, not the caller's. -#}
        {{ exceptions.raise_compiler_error(
            "nudge_performed: relative_to '" ~ relative_to ~ "' names a column of the events too; "
            ~ "qualify it with the calling query's alias, e.g. 'uses." ~ (relative_to | trim) ~ "'"
        ) }}
    {%- endif -%}
    {%- if direction not in ['before', 'after'] -%}
        {{ exceptions.raise_compiler_error(
            "nudge_performed: direction must be 'before' or 'after', got '" ~ direction ~ "'"
        ) }}
    {%- endif -%}
    {%- do nudge_check_at_least('nudge_performed', at_least) -%}
    {%- set anchor = relative_to if relative_to is not none else nudge_as_of() -%}
    {%- set subquery -%}
        select {{ 'count(*)' if at_least > 1 else '1' }}
        from (
            {#- contact_id is renamed so that a bare contact_id in the caller's argument can
                only mean the calling query's column -#}
            select
                contact_id as performer_id,
                event_id,
                event_name,
                occurred_at,
                properties,
                is_syncing
            from {{ nudge_events_relation(events) }}
        ) as nudge_event
        where nudge_event.performer_id = {{ contact_id }}
            and nudge_event.event_name in ({{ nudge_event_name_list(event_name) }})
        {%- if direction == 'before' %}
            {%- if within is not none %}
            and nudge_event.occurred_at > {{ nudge_subtract_duration(anchor, within) }}
            {%- endif %}
            and nudge_event.occurred_at <= {{ anchor }}
        {%- else %}
            and nudge_event.occurred_at > {{ anchor }}
            {%- if within is not none %}
            and nudge_event.occurred_at <= {{ nudge_add_duration(anchor, within) }}
            {%- endif %}
        {%- endif %}
        {%- if relative_to is not none or direction == 'after' %}
            and nudge_event.occurred_at <= {{ nudge_as_of() }}
        {%- endif %}
        {%- if where %}
            and ({{ where }})
        {%- endif %}
    {%- endset -%}
    {%- if at_least == 1 -%}
        exists ({{ subquery }})
    {%- else -%}
        ({{ subquery }}) >= {{ at_least }}
    {%- endif -%}
{%- endmacro %}


{% macro nudge_not_performed(event_name, within=none, relative_to=none, direction='before', at_least=1, where=none, contact_id='contact_id', events=none) -%}
    {#- The negation of nudge_performed: fewer than at_least such events in the window. -#}
    not ({{ nudge_performed(event_name, within, relative_to, direction, at_least, where, contact_id, events) }})
{%- endmacro %}


{% macro nudge_occurrence(event_name, which, where=none, events=none) -%}
    {#- One row per contact: their first or last event of the given names by as_of,
        ties broken by event_id so the answer never depends on load order. -#}
    {%- if which not in ['first', 'last'] -%}
        {{ exceptions.raise_compiler_error("nudge_occurrence: which must be 'first' or 'last', got '" ~ which ~ "'") }}
    {%- endif -%}
    {%- set order = 'asc' if which == 'first' else 'desc' -%}
    select
        contact_id,
        event_id,
        event_name,
        occurred_at,
        properties,
        is_syncing

    from (

        select
            contact_id,
            event_id,
            event_name,
            occurred_at,
            properties,
            is_syncing,
            row_number() over (
                partition by contact_id
                order by occurred_at {{ order }}, event_id {{ order }}
            ) as occurrence_rank

        {{ nudge_matching_events(event_name, where, events) }}

    ) as ranked_occurrences

    where occurrence_rank = 1
{%- endmacro %}


{% macro nudge_first_occurrence(event_name, where=none, events=none) -%}
    {{ nudge_occurrence(event_name, 'first', where, events) }}
{%- endmacro %}


{% macro nudge_last_occurrence(event_name, where=none, events=none) -%}
    {{ nudge_occurrence(event_name, 'last', where, events) }}
{%- endmacro %}


{% macro nudge_performers(event_name, at_least=1, within=none, where=none, events=none) -%}
    {#- One row per contact who, as of as_of, performed the event at least at_least times
        in the trailing window (as_of - within, as_of] (ever, without within):
        contact_id, member_since, event_count, last_performed_at.

        member_since is when the condition last began to hold without a break: walking
        each contact's events in time order, the condition holds at an event when the
        event at_least - 1 places back is still inside the window ending there, and it
        held without a break since the previous event when the event at_least places
        back had not yet left the window when this one came. -#}
    {%- do nudge_check_at_least('nudge_performers', at_least) -%}
    {%- set ordering = 'partition by contact_id order by occurred_at, event_id' -%}
    {%- if within is none -%}
        {%- set holds = 'window_start_event_at is not null' -%}
        {%- set carried_over = 'previous_window_start_event_at is not null' -%}
        {%- set in_window = 'occurred_at is not null' -%}
    {%- else -%}
        {%- set holds = 'window_start_event_at is not null and '
            ~ nudge_add_duration('window_start_event_at', within) ~ ' > occurred_at' -%}
        {%- set carried_over = 'previous_window_start_event_at is not null and '
            ~ nudge_add_duration('previous_window_start_event_at', within) ~ ' > occurred_at' -%}
        {%- set in_window = 'occurred_at > ' ~ nudge_subtract_duration(nudge_as_of(), within) -%}
    {%- endif -%}
    select
        contact_id,
        max(case when starts_a_stretch = 1 then occurred_at end) as member_since,
        count(case when {{ in_window }} then 1 end) as event_count,
        max(occurred_at) as last_performed_at

    from (

        select
            contact_id,
            occurred_at,
            case
                when ({{ holds }}) and not ({{ carried_over }}) then 1
                else 0
            end as starts_a_stretch

        from (

            select
                contact_id,
                event_id,
                occurred_at,
                {%- if at_least == 1 %}
                occurred_at as window_start_event_at,
                {%- else %}
                lag(occurred_at, {{ at_least - 1 }}) over ({{ ordering }}) as window_start_event_at,
                {%- endif %}
                lag(occurred_at, {{ at_least }}) over ({{ ordering }}) as previous_window_start_event_at

            {{ nudge_matching_events(event_name, where, events) }}

        ) as lagged_events

    ) as stretch_starts

    group by contact_id
    having count(case when {{ in_window }} then 1 end) >= {{ at_least }}
{%- endmacro %}


{% macro nudge_a_then_no_b(a, b, within, a_where=none, b_where=none, events=none) -%}
    {#- The A events followed by no B event in (A.occurred_at, A.occurred_at + within],
        once that window has ended by as_of: contact_id, event_id, event_name,
        occurred_at, properties, is_syncing (all of the A event) and window_ended_at.
        a_where filters the A events; b_where the B events, and may compare them with
        the A event through the alias a_event (e.g. the same product_id). -#}
    {%- set window_end = nudge_add_duration('a_event.occurred_at', within) -%}
    select
        a_event.contact_id,
        a_event.event_id,
        a_event.event_name,
        a_event.occurred_at,
        a_event.properties,
        a_event.is_syncing,
        {{ window_end }} as window_ended_at

    from {{ nudge_events_relation(events) }} as a_event
    where a_event.event_name in ({{ nudge_event_name_list(a) }})
        {%- if a_where %}
        and ({{ a_where }})
        {%- endif %}
        -- until the window has ended, a B may still come
        and {{ window_end }} <= {{ nudge_as_of() }}
        and not exists (
            select 1
            from {{ nudge_events_relation(events) }} as b_event
            where b_event.contact_id = a_event.contact_id
                and b_event.event_name in ({{ nudge_event_name_list(b) }})
                and b_event.occurred_at > a_event.occurred_at
                and b_event.occurred_at <= {{ window_end }}
                {%- if b_where %}
                and ({{ b_where }})
                {%- endif %}
        )
{%- endmacro %}
