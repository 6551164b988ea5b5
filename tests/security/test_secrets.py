"""Secrets come from the environment and never show: not in a failed tick's messages, not
in Dagster's event log (step failures with their stack traces and causes), not in
materialization metadata, not in `nudge status`, not in a resource's repr.

Two real ticks, with the SMTP password and the unsubscribe secret in the environment the way
production sets them: (a) the SMTP server is down, (b) a real server (aiosmtpd on
127.0.0.1) requires AUTH and refuses the login. Then everything they left is searched for
the secrets in every spelling a leak could take.
"""

from __future__ import annotations

import base64
import logging
import traceback
from urllib.parse import quote, quote_plus

import dagster as dg
import pytest
from dagster._serdes import serialize_value
from pydantic import SecretStr
from smtp_sink import HOST, SmtpSink, free_port
from typer.testing import CliRunner

from dagster_project.automations import Policy
from dagster_project.backends import backend_from_url, redact_url
from dagster_project.backends.file import FileBackend
from dagster_project.resources import EmailBackendResource, SendSettings
from dagster_project.sample_data import DEFAULT_END, generate
from dagster_project.send import send_automation
from dagster_project.send_assets import _metadata
from dagster_project.tick import run_tick
from tests.nudge_env import make_env

pytestmark = pytest.mark.e2e

PASSWORD = "S3cretPassw0rd"
UNSUBSCRIBE_SECRET = "Unsubscr1beS3cret-xyz"
AS_OF = DEFAULT_END.replace(tzinfo=None)


def spellings(secret: str, user: str = "user") -> list[str]:
    """The secret as is, URL-encoded, and as the SMTP AUTH exchange would carry it."""
    plain = base64.b64encode(f"\0{user}\0{secret}".encode()).decode()
    return [secret, quote(secret, safe=""), quote_plus(secret), base64.b64encode(secret.encode()).decode(), plain]


SECRETS = spellings(PASSWORD) + spellings(UNSUBSCRIBE_SECRET)


def assert_no_secret(text: str, where: str) -> None:
    for spelled in SECRETS:
        assert spelled not in text, f"a secret ({spelled[:3]}...) appears in {where}"


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def everything_a_tick_left(
    env, url: str, monkeypatch_env: pytest.MonkeyPatch, selection: dg.AssetSelection | None = None
) -> dict[str, str]:
    """Run one tick with the secrets in the environment; return every text it produced, by where."""
    monkeypatch_env.setenv("NUDGE_EMAIL_URL", url)
    monkeypatch_env.setenv("NUDGE_UNSUBSCRIBE_SECRET", UNSUBSCRIBE_SECRET)
    env.settings = env.settings.model_copy(
        update={"email_url": SecretStr(url), "unsubscribe_secret": SecretStr(UNSUBSCRIBE_SECRET)}
    )
    defs = env.defs()
    instance = dg.DagsterInstance.ephemeral()
    collect = _Collect()
    collect.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(collect)
    try:
        tick = run_tick(defs, AS_OF, instance=instance, log_level="DEBUG", selection=selection)
    finally:
        logging.getLogger().removeHandler(collect)
    [run] = instance.get_runs()
    records = instance.all_logs(run.run_id)
    failures = [r for r in records if r.dagster_event is not None and r.dagster_event.is_step_failure]
    return {
        "tick": tick,  # type: ignore[dict-item]
        "failures": "\n".join(tick.failures),
        "metadata": repr(tick.assets),
        "event log": "\n".join(serialize_value(record) for record in records),
        "step failure errors": "\n".join(
            r.dagster_event.step_failure_data.error.to_string() for r in failures  # message, stack, causes, context
        ),
        "python logs": "\n".join(collect.lines),
        "run config and tags": serialize_value(run),
        "resources": repr(defs.resources) + str(defs.resources),
    }


def nudge_status(env, monkeypatch_env: pytest.MonkeyPatch) -> str:
    from dagster_project.cli import app

    monkeypatch_env.setenv("NUDGE_WAREHOUSE", str(env.settings.warehouse))
    runner = CliRunner()
    outputs = [runner.invoke(app, ["status"]), runner.invoke(app, ["status", "--json"])]
    for result in outputs:
        assert result.exit_code == 0, result.output
    return "\n".join(result.output for result in outputs)


@pytest.fixture(scope="module")
def monkeypatch_env():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def server_down(tmp_path_factory, dbt_manifest, monkeypatch_env):
    env = make_env(tmp_path_factory.mktemp("secrets"))
    generate(env.settings.landing_dir, contacts=80, seed=5)
    url = f"smtp://user:{PASSWORD}@{HOST}:{free_port()}?timeout=5"
    left = everything_a_tick_left(env, url, monkeypatch_env)
    left["status"] = nudge_status(env, monkeypatch_env)
    return env, left


@pytest.fixture(scope="module")
def login_refused(server_down, monkeypatch_env):
    env, _ = server_down
    with SmtpSink(auth=("user", "the-right-password")) as sink:
        # The models were built by the first tick: this one runs the tick's send step alone.
        left = everything_a_tick_left(env, f"smtp://user:{PASSWORD}@{HOST}:{sink.port}?timeout=5", monkeypatch_env,
                                      selection=dg.AssetSelection.groups("send"))
        assert sink.messages == []
    left["status"] = nudge_status(env, monkeypatch_env)
    return env, left


@pytest.mark.parametrize("scenario", ["server_down", "login_refused"])
def test_a_failed_tick_leaves_no_trace_of_the_secrets(scenario, request):
    _env, left = request.getfixturevalue(scenario)
    tick = left.pop("tick")
    assert not tick.success  # it failed, and says why ...
    assert any(failure.startswith("send_") for failure in tick.failures)
    assert len(left["event log"]) > 10_000 and left["step failure errors"]  # ... at length, stack traces too
    for where, text in left.items():
        assert_no_secret(text, where)


def test_the_failures_say_what_went_wrong_without_the_password(server_down, login_refused):
    down, refused = server_down[1]["failures"], login_refused[1]["failures"]
    assert "cannot reach SMTP server 127.0.0.1:" in down
    assert "refused the login of 'user'" in refused and "535" in refused
    # The event log names the URL only redacted (the backend metadata of a successful send does too).
    assert f"user:{PASSWORD}" not in login_refused[1]["event log"]


def test_resources_and_urls_never_show_the_password():
    url = f"smtp://user:{PASSWORD}@mail.example:587?starttls=true"
    assert PASSWORD not in repr(EmailBackendResource(url=url)) + str(EmailBackendResource(url=url))
    settings = SendSettings(templates_dir="t", sender="a@b.example", postal_address="x", unsubscribe_url="https://x",
                            unsubscribe_mailto="u@b.example", unsubscribe_secret=UNSUBSCRIBE_SECRET)
    assert UNSUBSCRIBE_SECRET not in repr(settings) + str(settings)
    assert PASSWORD not in repr(backend_from_url(url))
    assert PASSWORD not in repr(backend_from_url(f"smtp://user:p@{PASSWORD}@mail.example:587"))


@pytest.mark.parametrize(
    "url",
    [
        f"smtp://user:{PASSWORD}#x@mail.example:587",  # unencoded '#', '/', '?' end the parser's netloc early
        f"smtp://user:{PASSWORD}/x@mail.example:587",
        f"smtp://user:{PASSWORD}?x@mail.example:587",
        f"smtp://user:{PASSWORD}@mail.example:notaport",
        f"smtp://user:{PASSWORD}@mail.example:587?bogus=1",
        f"smtp://user:{PASSWORD}@mail.example:587?timeout=-1",
        f"smtp://user:{PASSWORD}@",
        f"smtps://user:{PASSWORD}@mail.example?starttls=true",
        f"ftp://user:{PASSWORD}@mail.example",
        PASSWORD,
    ],
)
def test_a_malformed_email_url_is_refused_without_showing_its_password(url):
    assert PASSWORD not in redact_url(url)
    with pytest.raises(ValueError) as raised:
        backend_from_url(url)
    # Not in the message, nor in any exception chained to it (a traceback prints those).
    assert PASSWORD not in "".join(traceback.format_exception(raised.value))


def test_the_unsubscribe_secret_never_reaches_a_message_the_ledger_or_metadata(server_down, tmp_path):
    env, _ = server_down
    from dagster_project.automations import project_automations
    from dagster_project.send import SendConfig

    automations, _policy = project_automations(env.settings.dbt_project_dir,
                                              env.settings.dbt_project_dir / "target" / "manifest.json")
    welcome = next(a for a in automations if a.name == "welcome")
    config = SendConfig(templates_dir=env.settings.templates_dir, sender=env.settings.sender,
                        postal_address=env.settings.postal_address, unsubscribe_url=env.settings.unsubscribe_url,
                        unsubscribe_mailto=env.settings.unsubscribe_mailto, unsubscribe_secret=UNSUBSCRIBE_SECRET)
    import duckdb

    con = duckdb.connect(str(tmp_path / "copy.duckdb"))
    con.execute(f"attach '{env.settings.warehouse}' as source (read_only)")
    for schema in ("triggers", "staging", "intermediate"):
        con.execute(f"create schema {schema}")
    con.execute("create table triggers.trg_welcome as select * from source.triggers.trg_welcome")
    con.execute("create table staging.stg_contacts as select * from source.staging.stg_contacts")
    con.execute("create table intermediate.int_events as select * from source.intermediate.int_events")
    con.execute("detach source")
    outbox = tmp_path / "outbox"
    with FileBackend(outbox) as backend:
        report = send_automation(con, welcome, contacts_relation='"staging"."stg_contacts"',
                                 events_relation='"intermediate"."int_events"', backend=backend, config=config,
                                 as_of=AS_OF, policy=Policy(cap_per_day=None, cap_per_week=None,
                                                            quiet_start=AS_OF.time(), quiet_end=AS_OF.time()),
                                 marketing_automations=["welcome"])
    assert report.sent > 0
    ledger = repr(con.execute("select * from nudge.messages").fetchall())
    con.close()
    texts = {
        "metadata": repr(_metadata(report, backend.description, 0.1)),
        "ledger": ledger,
        "messages": "\n".join(path.read_bytes().decode("utf-8", "replace") for path in outbox.rglob("*.eml")),
    }
    assert "token=" in texts["messages"]  # the signed links are there; the key that signs them is not
    for where, text in texts.items():
        assert_no_secret(text, where)
