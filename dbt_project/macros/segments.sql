{% macro nudge_segment_models() -%}
    {#- The names of the segment models: models in the segments folder whose name starts
        with seg_, sorted. Empty while parsing, when dbt has no graph yet, and in dbt unit
        tests, which run without one. -#}
    {%- set nodes = (graph.get('nodes') or {}) if execute else {} -%}
    {%- set names = [] -%}
    {%- for node in nodes.values() -%}
        {%- if node.resource_type == 'model'
                and node.package_name == project_name
                and node.fqn | length > 2 and node.fqn[1] == 'segments'
                and node.name.startswith('seg_') -%}
            {%- do names.append(node.name) -%}
        {%- endif -%}
    {%- endfor -%}
    {{ return(names | sort) }}
{%- endmacro %}


{% macro nudge_require_segment_parents(segment_names) -%}
    {#- dbt learns a model's parents while parsing, before the graph exists, so a model
        that reads every segment must also name each one in a depends_on comment. A
        missing one fails the build with the line to add, instead of silently never
        recording that segment. -#}
    {%- if not execute -%}
        {{ return('') }}
    {%- endif -%}
    {%- set missing = [] -%}
    {%- for name in segment_names -%}
        {%- if ('model.' ~ project_name ~ '.' ~ name) not in model.depends_on.nodes -%}
            {%- do missing.append(name) -%}
        {%- endif -%}
    {%- endfor -%}
    {%- if missing -%}
        {%- set lines = [] -%}
        {%- for name in missing -%}
            {%- do lines.append("-- depends_on: {{ ref('" ~ name ~ "') }}") -%}
        {%- endfor -%}
        {{ exceptions.raise_compiler_error(
            model.name ~ " does not read the segment model(s) " ~ missing | join(', ')
            ~ " yet: add at the top of " ~ model.original_file_path ~ ":\n" ~ lines | join('\n')
        ) }}
    {%- endif -%}
    {{ return('') }}
{%- endmacro %}


{% macro nudge_dormancy() -%}
    {#- What seg_dormant means: no live event of these for this long. What counts as being
        active in the app or the shop; trg_winback's exit_events list the same events: coming
        back is what ends both the dormancy and the winback. -#}
    {{ return({
        'activity_events': ['logged_in', 'workout_completed', 'product_viewed', 'added_to_cart', 'purchased',
                            'premium_feature_used'],
        'dormant_after': '30d',
    }) }}
{%- endmacro %}


{% macro nudge_dormancy_wakes() -%}
    {#- The time rules of a per-contact model whose rows change when a contact turns dormant
        (seg_dormant, trg_winback): each activity event, once the dormancy's length has passed
        after it. -#}
    {%- set dormancy = nudge_dormancy() -%}
    {%- set wakes = {} -%}
    {%- for event_name in dormancy.activity_events -%}
        {%- do wakes.update({event_name: dormancy.dormant_after}) -%}
    {%- endfor -%}
    {{ return(wakes) }}
{%- endmacro %}


{% macro nudge_segment_entries(segment_name, rows=none) -%}
    {#- Trigger rows for an automation that fires when a contact enters a segment: one
        row per recorded entry (segment_membership_changes), by as_of. The trigger_key
        is the contact and the moment they entered, so each entry (say, each inactive
        stretch) qualifies once, and re-recording the same entry after a full refresh
        keeps the same key. Columns: contact_id, trigger_key, qualified_at, context
        ({"segment", "entered_at"}), segment, entered_at. `rows`: where the recorded changes
        are read from (a per-contact model's nudge_rows_to_rebuild), segment_membership_changes
        when none. -#}
    {%- if not (segment_name is string and segment_name.startswith('seg_')) -%}
        {{ exceptions.raise_compiler_error(
            "nudge_segment_entries: '" ~ segment_name ~ "' is not a segment model name (seg_...)"
        ) }}
    {%- endif -%}
    {%- set known_segments = nudge_segment_models() -%}
    {%- if known_segments and segment_name not in known_segments -%}
        {{ exceptions.raise_compiler_error(
            "nudge_segment_entries: there is no segment model " ~ segment_name
            ~ " in models/segments (found: " ~ known_segments | join(', ') ~ ")"
        ) }}
    {%- endif -%}
    {%- set entered_at_text = 'cast(changed_at as ' ~ dbt.type_string() ~ ')' -%}
    select
        contact_id,
        contact_id || ':' || {{ entered_at_text }} as trigger_key,
        changed_at as qualified_at,
        '{"segment": ' || {{ json_string('segment') }}
            || ', "entered_at": ' || {{ json_string(entered_at_text) }} || '}' as context,
        segment,
        changed_at as entered_at

    from {{ rows if rows is not none else ref('segment_membership_changes') }}
    where segment = '{{ segment_name }}'
        and change_type = 'entered'
        and changed_at <= {{ nudge_as_of() }}
{%- endmacro %}
