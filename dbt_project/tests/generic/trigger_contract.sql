{% test trigger_contract(model) %}

{#- The trigger contract's rows in one query: each of the five columns present and no
    qualification after as_of. One test where six (five not_null and not_after_as_of) had
    cost a dbt node, a query and a Dagster check each, every tick. A failing row says
    which rule it breaks; as any test on the model, it stops that automation only. -#}

with

qualifications as (

    select * from {{ model }}

),

problems as (

    select
        contact_id,
        trigger_key,
        qualified_at,
        case
            when contact_id is null then 'contact_id is null'
            when trigger_key is null then 'trigger_key is null'
            when qualified_at is null then 'qualified_at is null'
            when due_at is null then 'due_at is null'
            when context is null then 'context is null'
            when qualified_at > {{ nudge_as_of() }} then 'qualified_at is after as_of'
        end as problem

    from qualifications

)

select * from problems
where problem is not null

{% endtest %}
