"""`nudge report`: one self-contained HTML file of the reporting models.

It reads the rpt_* tables that dbt builds on every tick, read-only, so it can run beside
the schedule whenever no tick holds the warehouse's write lock, and draws each
automation's funnel, its messages per day by status, its conversion against the holdout
with the lift's interval, and its top reasons for not sending. The charts are Plotly
figures with plotly.js inlined once in the page: the file opens offline, from an email
attachment or a CI artifact, with nothing fetched from the internet.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import plotly.graph_objects as go
from jinja2 import Environment, select_autoescape
from plotly.offline import get_plotlyjs

# The per-day statuses, in stacking order, with the colours every chart uses for them.
STATUS_COLUMNS = (
    ("sent", "sent", "#2e7d32"),
    ("held_out", "held out", "#7e57c2"),
    ("held_for_quiet_hours", "held (quiet hours)", "#90a4ae"),
    ("pending", "pending", "#fbc02d"),
    ("skipped", "skipped", "#ef6c00"),
    ("failed", "failed", "#c62828"),
    ("unknown", "unknown", "#6d4c41"),
)
FUNNEL_COLOURS = ("#1565c0", "#2e7d32", "#00897b", "#f9a825", "#6a1b9a")
TOP_REASONS = 5
CHART_CONFIG = {"displaylogo": False, "responsive": True, "displayModeBar": False}
REPORT_TABLES = (
    "rpt_automations", "rpt_automation_performance", "rpt_engagement", "rpt_conversions", "rpt_skip_reasons",
)


class ReportUnavailable(RuntimeError):
    """The warehouse cannot be read right now, or has no reporting tables yet; the message says which."""


@dataclass
class AutomationReport:
    name: str
    category: str
    holdout_percent: float
    days: list[dict[str, Any]] = field(default_factory=list)
    engagement: dict[str, Any] | None = None
    conversion: dict[str, Any] | None = None
    reasons: list[dict[str, Any]] = field(default_factory=list)

    def total(self, column: str) -> int:
        return sum(int(day[column] or 0) for day in self.days)

    @property
    def funnel(self) -> list[tuple[str, int | None]]:
        engagement = self.engagement or {}
        conversion = self.conversion
        return [
            ("qualified", self.total("qualified")),
            ("sent", self.total("sent")),
            ("opened", int(engagement.get("opened") or 0)),
            ("clicked", int(engagement.get("clicked") or 0)),
            ("converted", int(conversion["sent_converted"]) if conversion else None),
        ]


@dataclass
class ReportData:
    warehouse: Path
    ledger_until: datetime | None
    automations: list[AutomationReport]


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    return con.sql(sql).to_arrow_table().to_pylist()


def load_report_data(warehouse: Path) -> ReportData:
    """The reporting tables, read with a read-only connection."""
    if not warehouse.exists():
        raise ReportUnavailable(f"There is no warehouse at {warehouse} yet: run `nudge demo` or `nudge run` first.")
    try:
        con = duckdb.connect(str(warehouse), read_only=True)
    except duckdb.IOException as error:
        if "lock" in str(error).lower():
            raise ReportUnavailable(
                f"The warehouse {warehouse} is busy: a tick (or another writer) holds its lock. "
                "Run `nudge report` again when the tick has finished."
            ) from None
        raise ReportUnavailable(f"Cannot open the warehouse {warehouse}: {error}") from None
    try:
        present = {
            name for (name,) in con.execute(
                "select table_name from information_schema.tables where table_schema = 'reporting'"
            ).fetchall()
        }
        missing = [name for name in REPORT_TABLES if name not in present]
        if missing:
            raise ReportUnavailable(
                f"The warehouse {warehouse} has no {', '.join('reporting.' + name for name in missing)} yet: "
                "the reporting models are built by a tick; run `nudge run` (or `nudge demo`) first."
            )
        automations = {
            row["automation"]: AutomationReport(row["automation"], row["category"], float(row["holdout_percent"] or 0))
            for row in _rows(con, "select * from reporting.rpt_automations order by automation")
        }

        def report_for(name: str) -> AutomationReport:
            # an automation removed from the project still has its history in the ledger
            return automations.setdefault(name, AutomationReport(name, "removed", 0.0))

        for row in _rows(con, "select * from reporting.rpt_automation_performance order by automation, decided_on"):
            report_for(row["automation"]).days.append(row)
        for row in _rows(con, "select * from reporting.rpt_engagement"):
            report_for(row["automation"]).engagement = row
        for row in _rows(con, "select * from reporting.rpt_conversions"):
            report_for(row["automation"]).conversion = row
        for row in _rows(
            con, "select * from reporting.rpt_skip_reasons order by automation, messages desc, status, reason"
        ):
            report_for(row["automation"]).reasons.append(row)
        ledger_until = con.execute("select max(decided_at) from nudge.messages").fetchone()[0]
    except duckdb.CatalogException as error:
        raise ReportUnavailable(f"The warehouse {warehouse} is missing a table the report reads: {error}") from None
    finally:
        con.close()
    return ReportData(warehouse, ledger_until, sorted(automations.values(), key=lambda a: a.name))


def _layout(title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 14}},
        "margin": {"l": 10, "r": 10, "t": 40, "b": 10},
        "height": 280,
        "paper_bgcolor": "white",
        "plot_bgcolor": "white",
        "font": {"family": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", "size": 12},
        **extra,
    }


def funnel_figure(automation: AutomationReport) -> go.Figure:
    stages = [(stage, count) for stage, count in automation.funnel if count is not None]
    figure = go.Figure(go.Funnel(
        y=[stage for stage, _ in stages],
        x=[count for _, count in stages],
        textinfo="value+percent initial",
        marker={"color": list(FUNNEL_COLOURS[: len(stages)])},
    ))
    figure.update_layout(_layout("Funnel (converted: contacts)"))
    return figure


def daily_figure(automation: AutomationReport) -> go.Figure:
    days = [str(day["decided_on"]) for day in automation.days]
    figure = go.Figure([
        go.Bar(name=label, x=days, y=[int(day[column] or 0) for day in automation.days], marker_color=colour)
        for column, label, colour in STATUS_COLUMNS
        if any(day[column] for day in automation.days)
    ])
    figure.update_layout(_layout(
        "Messages per day by status", barmode="stack",
        xaxis={"type": "category", "title": "decided on (UTC)"}, yaxis={"title": "messages", "gridcolor": "#eee"},
        legend={"orientation": "h", "y": -0.25},
    ))
    return figure


def conversion_figure(automation: AutomationReport) -> go.Figure:
    conversion = automation.conversion or {}
    groups = [("sent", "sent_conversion_rate", "sent_contacts", "#2e7d32"),
              ("holdout", "holdout_conversion_rate", "holdout_contacts", "#7e57c2")]
    figure = go.Figure()
    for label, rate, count, colour in groups:
        value = conversion.get(rate)
        figure.add_trace(go.Bar(
            name=label, x=[label], y=[float(value) if value is not None else 0.0], marker_color=colour,
            text=[f"{float(value):.1%} of {conversion.get(count, 0)}" if value is not None else f"no {label} contacts"],
            textposition="outside", xaxis="x", yaxis="y", showlegend=False,
        ))
    lift, low, high = (conversion.get(key) for key in ("lift", "lift_ci_low", "lift_ci_high"))
    goal = conversion.get("conversion_event")
    title = f"Conversion to {goal} within {conversion.get('conversion_window')}" if goal else "Conversion"
    rates_axis = {"tickformat": ".0%", "gridcolor": "#eee", "rangemode": "tozero"}
    if lift is None or low is None:
        figure.update_layout(_layout(f"{title}: no holdout, so no lift", yaxis=rates_axis))
        return figure
    figure.add_trace(go.Scatter(
        x=[float(lift)], y=["lift"], mode="markers", marker={"size": 11, "color": "#1565c0"},
        error_x={"type": "data", "symmetric": False, "array": [float(high) - float(lift)],
                 "arrayminus": [float(lift) - float(low)], "thickness": 2, "width": 8},
        xaxis="x2", yaxis="y2", name="lift, 95% CI", showlegend=False,
        hovertemplate="lift %{x:.1%}<extra>95% CI " + f"{float(low):.1%} to {float(high):.1%}</extra>",
    ))
    figure.update_layout(_layout(
        f"{title}: sent vs holdout", xaxis={"domain": [0, 0.45]}, yaxis=rates_axis,
        xaxis2={"domain": [0.58, 1], "anchor": "y2", "tickformat": ".0%", "zeroline": True, "zerolinecolor": "#999",
                "title": f"lift {float(lift):+.1%}, 95% CI"},
        yaxis2={"anchor": "x2", "showticklabels": False},
    ))
    return figure


def reasons_figure(automation: AutomationReport) -> go.Figure:
    top = automation.reasons[:TOP_REASONS]
    labels = [f"{row['status']}: {row['reason']}" for row in top]
    figure = go.Figure(go.Bar(
        x=[int(row["messages"]) for row in top][::-1], y=labels[::-1], orientation="h",
        marker_color="#ef6c00", text=[int(row["messages"]) for row in top][::-1], textposition="auto",
    ))
    figure.update_layout(_layout(f"Top {TOP_REASONS} reasons not sent", xaxis={"gridcolor": "#eee"},
                                 yaxis={"automargin": True}))
    return figure


def _chart(figure: go.Figure, div_id: str) -> str:
    # A fixed div id keeps the file the same for the same data (plotly draws a random one).
    return figure.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=CHART_CONFIG)


def _percent(value: Any) -> str:
    return "–" if value is None else f"{float(value):.1%}"


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Nudge report</title>
<script>
  // A chart that fails to draw says so on the page (and tests read it from the DOM).
  window.nudgeErrors = [];
  window.addEventListener("error", function (event) {
    window.nudgeErrors.push(String(event.message || event));
    document.documentElement.setAttribute("data-script-errors", window.nudgeErrors.join(" | "));
  });
</script>
<script>{{ plotly_js }}</script>
<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #222; background: #f6f7f9; }
  header { background: #1f2a44; color: white; padding: 18px 28px; }
  header h1 { margin: 0 0 4px; font-size: 22px; }
  header p { margin: 0; opacity: 0.85; font-size: 13px; }
  main { padding: 16px 28px 40px; }
  table { border-collapse: collapse; background: white; font-size: 13px; margin: 8px 0 20px; }
  th, td { padding: 6px 10px; border-bottom: 1px solid #e3e5e8; text-align: right; }
  th:first-child, td:first-child { text-align: left; }
  th { background: #eef0f3; }
  section { background: white; border: 1px solid #e3e5e8; border-radius: 6px; margin: 18px 0; padding: 10px 16px; }
  section h2 { font-size: 17px; margin: 6px 0; }
  section h2 small { font-weight: normal; color: #666; font-size: 12px; }
  .charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 8px; }
  /* a grid item may shrink below the chart plotly first drew; the chart is resized to fit on load */
  .chart { min-width: 0; overflow: hidden; }
  .note { color: #666; font-size: 12px; }
</style>
</head>
<body>
<header>
  <h1>Nudge: automation report</h1>
  <p>Warehouse {{ warehouse }}; ledger decisions up to {{ ledger_until or "–" }} UTC.
     Lift is the sent group's conversion rate minus the holdout's, with a 95% Newcombe hybrid score interval.</p>
</header>
<main>
<table id="summary">
  <thead><tr><th>automation</th><th>qualified</th><th>sent</th><th>open rate</th><th>click rate</th>
    <th>converted (sent)</th><th>converted (holdout)</th><th>lift</th><th>95% CI</th><th>attributed revenue</th></tr></thead>
  <tbody>
  {% for a in automations %}
    {% set c = a.conversion or {} %}{% set e = a.engagement or {} %}
    <tr><td>{% if a.days %}<a href="#{{ a.name }}">{{ a.name }}</a>{% else %}{{ a.name }}{% endif %}</td><td>{{ a.total("qualified") }}</td><td>{{ a.total("sent") }}</td>
      <td>{{ percent(e.get("open_rate")) }}</td><td>{{ percent(e.get("click_rate")) }}</td>
      <td>{{ percent(c.get("sent_conversion_rate")) }}{% if c %} of {{ c.sent_contacts }}{% endif %}</td>
      <td>{{ percent(c.get("holdout_conversion_rate")) }}{% if c %} of {{ c.holdout_contacts }}{% endif %}</td>
      <td>{{ percent(c.get("lift")) }}</td>
      <td>{% if c.get("lift_ci_low") is not none %}{{ percent(c.get("lift_ci_low")) }} to {{ percent(c.get("lift_ci_high")) }}{% else %}–{% endif %}</td>
      <td>{% if c %}{{ "%.2f"|format(c.attributed_revenue|float) }} ({{ c.attributed_purchases }}){% else %}–{% endif %}</td></tr>
  {% endfor %}
  </tbody>
</table>
<p class="note">Qualified, sent, opened and clicked count messages; converted counts contacts. A contact converts when the
automation's goal event follows within its window: after sent_at for the sent group, after decided_at for the holdout.
Revenue is last touch: a purchase goes to the latest email sent to the contact before it whose window holds it.</p>
{% for a in sections %}
<section id="{{ a.name }}" class="automation">
  <h2>{{ a.name }} <small>{{ a.category }}{% if a.holdout_percent %}, holdout {{ a.holdout_percent|round(1) }}%{% endif %}</small></h2>
  <div class="charts">
    {% for chart in charts[a.name] %}<div class="chart">{{ chart|safe }}</div>{% endfor %}
  </div>
</section>
{% endfor %}
{% if not sections %}<p>No automation has decided anything yet.</p>{% endif %}
</main>
<script>
  window.addEventListener("load", function () {
    document.querySelectorAll(".js-plotly-plot").forEach(function (plot) { Plotly.Plots.resize(plot); });
  });
</script>
</body>
</html>
"""


def render_report(data: ReportData) -> str:
    charts: dict[str, list[str]] = defaultdict(list)
    # an automation nobody qualified for yet is a row of the summary, not a section of empty charts
    sections = [automation for automation in data.automations if automation.days]
    for automation in sections:
        charts[automation.name].append(_chart(funnel_figure(automation), f"funnel-{automation.name}"))
        charts[automation.name].append(_chart(daily_figure(automation), f"daily-{automation.name}"))
        if automation.conversion is not None:
            charts[automation.name].append(_chart(conversion_figure(automation), f"conversion-{automation.name}"))
        if automation.reasons:
            charts[automation.name].append(_chart(reasons_figure(automation), f"reasons-{automation.name}"))
    environment = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    return environment.from_string(PAGE).render(
        plotly_js=_inline_script(get_plotlyjs()),
        warehouse=data.warehouse,
        ledger_until=data.ledger_until,
        automations=data.automations,
        sections=sections,
        charts=charts,
        percent=_percent,
    )


def _inline_script(source: str) -> Any:
    from markupsafe import Markup

    # Inside <script>, only "</script" could end the element early.
    return Markup(source.replace("</script", "<\\/script"))


def write_report(warehouse: Path, out: Path) -> Path:
    html = render_report(load_report_data(warehouse))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out
