{#- A view: the union of the segments is read once a tick, by segment_membership_changes, and
    written as a table it was rewritten whole every hour (347k rows at 10M events). -#}
{{ config(materialized='view') }}

-- dbt learns a model's parents while parsing, before the list of segments below exists:
-- each segment model is named here too (a build names any one missing, with the line to add).
-- depends_on: {{ ref('seg_dormant') }}
-- depends_on: {{ ref('seg_free_plan_engaged') }}
-- depends_on: {{ ref('seg_power_users') }}
-- depends_on: {{ ref('seg_recent_buyers') }}

{%- set segments = nudge_segment_models() %}
{{- nudge_require_segment_parents(segments) }}

with

{% for segment in segments %}
{{ segment }} as (

    select * from {{ ref(segment) }}

),

{% endfor %}
final as (

    {%- for segment in segments %}

    select
        cast('{{ segment }}' as {{ dbt.type_string() }}) as segment,
        cast(contact_id as {{ dbt.type_string() }}) as contact_id,
        cast(member_since as {{ dbt.type_timestamp() }}) as member_since

    from {{ segment }}
    {% if not loop.last %}
    union all
    {%- endif %}
    {%- else %}

    -- no segment models (or parsing): the right columns and no rows
    select
        cast(null as {{ dbt.type_string() }}) as segment,
        cast(null as {{ dbt.type_string() }}) as contact_id,
        cast(null as {{ dbt.type_timestamp() }}) as member_since

    where 1 = 0
    {%- endfor %}

)

select * from final
