{% test not_after_as_of(model, column_name) %}

with

future_rows as (

    select * from {{ model }}
    where {{ column_name }} > {{ nudge_as_of() }}

)

select * from future_rows

{% endtest %}
