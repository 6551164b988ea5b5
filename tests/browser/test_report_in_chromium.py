"""The report and a preview, opened in a real headless Chromium with the network cut off.

The report is `nudge report` over a warehouse whose reporting models dbt built from a planted
ledger and the demo's own engagement events (tests/report_warehouse.py). Chromium runs the
page's scripts, then prints the DOM and writes a PNG of that same page load (one launch per
page: `--dump-dom` beside `--screenshot`): the charts must have drawn (plotly's SVG with marks
in it), no script may have failed (the page's error hook and Chromium's console log), and the
screenshot must be a picture rather than a blank page.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
from PIL import Image
from typer.testing import CliRunner

from dagster_project.chromium import PageRun, find_chromium, screenshot
from dagster_project.cli import app
from tests.report_warehouse import report_warehouse_copy

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="Chromium is not installed (apt-get install chromium; .ci/run installs it, so CI runs this file)",
)

# Every request the page might make goes nowhere: the file has to work offline.
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND"


def load(url: str, png, *, width: int, height: int) -> PageRun:
    """One Chromium launch: the PNG written to `png`, and the DOM of the same load on stdout."""
    return screenshot(url, png, width=width, height=height, extra_flags=(OFFLINE, "--dump-dom"))


@pytest.fixture(scope="module")
def report(tmp_path_factory, dbt_manifest):
    root = tmp_path_factory.mktemp("browser")
    warehouse = report_warehouse_copy(tmp_path_factory, root)
    out = root / "report.html"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NUDGE_WAREHOUSE", str(warehouse))
        result = CliRunner().invoke(app, ["report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def report_png(report):
    return report.parent / "report.png"


@pytest.fixture(scope="module")
def rendered(report, report_png):
    return load(report.as_uri(), report_png, width=1280, height=1400)


def html_attributes(dom: str) -> str:
    return re.search(r"<html[^>]*>", dom).group(0)


def test_the_report_is_one_file_that_needs_nothing_from_the_internet(report):
    html = report.read_text()
    assert not re.search(r"<script[^>]+src=", html), "every script is inline"
    assert not re.search(r"<link[^>]+stylesheet", html) and "@import" not in html and "@font-face" not in html
    assert "Plotly" in html and report.stat().st_size > 1_000_000, "plotly.js is inlined"


def test_every_chart_draws_with_marks_in_chromium(report, rendered):
    dom = rendered.stdout
    sections = re.findall(r'<section id="([a-z_]+)" class="automation"', dom)
    assert sections == ["cart_abandoned", "welcome", "winback"]
    charts = re.findall(r'<div id="(funnel|daily|conversion|reasons)-([a-z_]+)"', dom)
    assert len(charts) == 12
    plots = dom.count('class="js-plotly-plot"') or dom.count("js-plotly-plot")
    assert plots >= len(charts), "plotly turned each chart's div into a plot"
    assert dom.count('class="main-svg"') >= 2 * len(charts)
    # marks: funnel stages and bars are <g class="point"> paths; the lift is a scatter point with its error bar
    assert len(re.findall(r'class="point"', dom)) >= 40
    assert 'class="errorbar"' in dom or "errorbars" in dom


def test_the_summary_shows_rates_and_the_lift_interval(rendered):
    dom = rendered.stdout
    row = re.search(r'<tr><td><a href="#winback">winback</a></td>(.*?)</tr>', dom, re.S).group(1)
    cells = re.findall(r"<td>(.*?)</td>", row, re.S)
    assert re.fullmatch(r"-?\d+\.\d% to -?\d+\.\d%", cells[7].strip()), cells  # the 95% CI column
    assert all(cell.strip() for cell in cells)


def test_no_script_failed(rendered):
    assert "data-script-errors" not in html_attributes(rendered.stdout), html_attributes(rendered.stdout)
    assert rendered.console_errors == []


def test_the_screenshot_is_a_picture_of_charts(rendered, report_png):
    image = Image.open(report_png).convert("RGB")
    assert image.size == (1280, 1400)
    colours = Counter(image.getdata())
    _, most = colours.most_common(1)[0]
    assert len(colours) > 200, "anti-aliased charts and text make many colours; a blank page has one"
    assert most < 0.8 * image.width * image.height
    # the status colours of the charts are on the page: sent green, skipped orange
    assert colours[(0x2E, 0x7D, 0x32)] > 500 and colours[(0xEF, 0x6C, 0x00)] > 500


def test_a_preview_renders_in_chromium(report, tmp_path):
    """No trigger table in this warehouse: the preview falls back to a sample contact."""
    out = tmp_path / "welcome.html"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NUDGE_WAREHOUSE", str(report.parent / "warehouse.duckdb"))
        result = CliRunner().invoke(app, ["preview", "welcome", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "sample contact" in result.output
    png = tmp_path / "welcome.png"
    page = load(out.as_uri(), png, width=800, height=900)
    assert "Sam" in page.stdout and "{{" not in page.stdout
    assert page.console_errors == []
    assert len(set(Image.open(png).convert("RGB").getdata())) > 50
