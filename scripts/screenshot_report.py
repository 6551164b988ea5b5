"""Build the demo's report and photograph it with headless Chromium: docs/report.png for the README.

    python scripts/screenshot_report.py [--contacts 2000] [--warehouse FILE] [--out docs/report.png]

Without --warehouse it runs `nudge demo` (sample data, two ticks, sample engagement, the
report) in a scratch folder, data/screenshot/, so the installation's own data is left alone.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dagster_project.chromium import find_chromium, screenshot  # noqa: E402
from dagster_project.report import write_report  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=2000)
    parser.add_argument("--warehouse", type=Path, help="Photograph the report of this warehouse; no demo run.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1800)
    args = parser.parse_args(argv)
    if find_chromium() is None:
        parser.error("no Chromium found: apt-get install chromium, or set NUDGE_CHROMIUM")

    warehouse = args.warehouse
    if warehouse is None:
        scratch = ROOT / "data" / "screenshot"
        warehouse = scratch / "warehouse.duckdb"
        environment = {
            **os.environ,
            "NUDGE_WAREHOUSE": str(warehouse),
            "NUDGE_LANDING_DIR": str(scratch / "landing"),
            "NUDGE_EMAIL_URL": f"file://{scratch / 'outbox'}",
        }
        environment.pop("DAGSTER_HOME", None)  # an ephemeral instance: the demo's runs stay out of the UI's history
        subprocess.run([sys.executable, "-m", "dagster_project.cli", "demo", "--contacts", str(args.contacts)],
                       cwd=ROOT, env=environment, check=True)
    report = write_report(warehouse.resolve(), warehouse.resolve().parent / "report.html")
    screenshot(report.as_uri(), args.out, width=args.width, height=args.height)
    print(f"Screenshot of {report} written to {args.out}")
    return args.out


if __name__ == "__main__":
    main()
