-- The automations as the trigger models' YAML declares them (config.meta.nudge over
-- vars.nudge.defaults), so reports can join a goal event and window to the ledger in SQL.

with

automations as (

    {{ nudge_automation_rows() }}

),

final as (

    select * from automations

)

select * from final
