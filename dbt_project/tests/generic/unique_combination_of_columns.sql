{% test unique_combination_of_columns(model, combination_of_columns) %}

{#- Over the rows a per-contact model's build rewrote when the rest are known clean
    (macros/rebuilt_rows.sql); a null is a value here, as in a group by. -#}
{{ nudge_duplicates(model, combination_of_columns) }}

{% endtest %}
