"""Two `nudge run` processes at once: one waits for the other; nothing fails, nothing is sent twice."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dagster_project.sample_data import DEFAULT_END, generate
from tests.nudge_env import make_env

pytestmark = pytest.mark.e2e


def test_two_ticks_at_once_neither_fail_on_the_lock_nor_double_send(tmp_path, dbt_manifest):
    env = make_env(tmp_path)
    generate(env.settings.landing_dir, contacts=200, seed=5)
    environment = {
        **os.environ,
        "NUDGE_WAREHOUSE": str(env.settings.warehouse),
        "NUDGE_LANDING_DIR": str(env.settings.landing_dir),
        "NUDGE_EMAIL_URL": f"file://{env.outbox}",
        "NUDGE_UNSUBSCRIBE_SECRET": "test-secret",
    }
    environment.pop("DAGSTER_HOME", None)  # separate processes that share nothing but the warehouse file
    command = [sys.executable, "-m", "dagster_project.cli", "run", "--as-of", DEFAULT_END.isoformat()]
    runs = [
        subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=900)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output[-3000:]

    sent = env.query("select message_id from nudge.messages where status = 'sent'")
    message_ids = [m["Message-ID"] for m in env.emails()]
    assert sent and len(message_ids) == len(sent) == len(set(message_ids))
    assert set(message_ids) == {row[0] for row in sent}
