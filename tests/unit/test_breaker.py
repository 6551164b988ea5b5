"""The circuit breaker's decision: surge against the trailing median, the floor, history, staleness."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from dagster_project.automations import AutomationConfigError, load_policy
from dagster_project.breaker import BreakerPolicy, check, judge, release, tag_releases, trailing_due

AS_OF = datetime(2026, 11, 1, 12)
POLICY = BreakerPolicy(surge_multiple=5, surge_floor=100, trailing_ticks=24, min_history=3,
                       max_event_age=timedelta(hours=6))
FRESH = AS_OF - timedelta(minutes=5)


def verdict(due, history, *, loaded=FRESH, policy=POLICY):
    return judge(due, history, as_of=AS_OF, newest_event_loaded_at=loaded, policy=policy)


def test_a_surge_over_the_multiple_and_the_floor_trips():
    v = verdict(600, [100, 30, 40, 50])
    assert v.tripped and v.median == 45
    assert v.reason == ("surge: 600 newly due, over 5x the median of 45 over the last 4 ticks that sent "
                        "and over the floor of 100")


def test_the_multiple_is_of_the_median_not_the_mean():
    # one big tick among quiet ones moves a mean, not a median
    assert verdict(150, [1000, 20, 20, 20, 20]).tripped


def test_under_the_floor_never_trips_however_quiet_it_was():
    assert not verdict(100, [0, 0, 0]).tripped
    assert verdict(101, [0, 0, 0]).tripped


def test_within_the_multiple_does_not_trip():
    assert not verdict(500, [100, 100, 100]).tripped  # exactly 5x is not over it
    assert verdict(501, [100, 100, 100]).tripped


def test_too_little_history_never_trips_on_a_surge():
    # a first deploy has no normal yet: the send window keeps history from going out
    assert not verdict(10_000, [1, 1]).tripped
    assert verdict(10_000, [1, 1, 1]).tripped
    assert not verdict(10_000, []).tripped


def test_stale_events_trip_whatever_the_count():
    v = verdict(0, [], loaded=AS_OF - timedelta(hours=6, minutes=30))
    assert v.tripped
    assert v.reason == ("stale inputs: the newest event was loaded 6h 30m before this tick (2026-11-01 05:30 UTC), "
                        "over the limit of 6h (max_event_age)")
    assert not verdict(0, [], loaded=AS_OF - timedelta(hours=6)).tripped  # at the limit is fresh


def test_a_replay_of_an_hour_before_the_events_were_loaded_is_fresh():
    assert not verdict(3, [3, 3, 3], loaded=AS_OF + timedelta(days=20)).tripped


def test_no_events_at_all_or_no_limit_is_not_judged_stale():
    assert not verdict(3, [3, 3, 3], loaded=None).tripped
    no_limit = BreakerPolicy(max_event_age=None)
    assert not verdict(3, [3, 3, 3], loaded=AS_OF - timedelta(days=30), policy=no_limit).tripped


def test_disabled_never_trips():
    off = BreakerPolicy(enabled=False)
    assert not verdict(10_000, [1, 1, 1], loaded=AS_OF - timedelta(days=30), policy=off).tripped


def test_the_run_tag_names_automations_separated_by_commas():
    assert tag_releases(" welcome, cart_abandoned ,") == {"welcome", "cart_abandoned"}
    assert tag_releases(None) == set()


def test_history_is_the_trailing_ticks_before_this_one_that_sent():
    con = duckdb.connect()
    policy = BreakerPolicy(surge_floor=10, trailing_ticks=3, min_history=1, max_event_age=None)
    for hours, due in ((-5, 1), (-4, 2), (-3, 3), (-2, 4)):
        check(con, "welcome", as_of=AS_OF + timedelta(hours=hours), due=due, newest_event_at=None, policy=policy,
              released_by_tag=None, now=AS_OF)
    tripped = check(con, "welcome", as_of=AS_OF - timedelta(hours=1), due=500, newest_event_at=None, policy=policy,
                    released_by_tag=None, now=AS_OF)
    assert tripped.blocks
    # newest first, only the last three, the tripped tick left out, nothing at or after as_of
    assert trailing_due(con, "welcome", AS_OF + timedelta(hours=1), 3) == [4, 3, 2]
    assert trailing_due(con, "welcome", AS_OF - timedelta(hours=3), 3) == [2, 1]


def test_a_release_is_used_by_the_next_tick_only():
    con = duckdb.connect()
    policy = BreakerPolicy(surge_floor=10, min_history=1, max_event_age=None)
    for hours in (-3, -2, -1):
        check(con, "welcome", as_of=AS_OF + timedelta(hours=hours), due=1, newest_event_at=None, policy=policy,
              released_by_tag=None, now=AS_OF)
    release(con, "welcome", by="sam", reason="known import", now=AS_OF)
    released = check(con, "welcome", as_of=AS_OF, due=500, newest_event_at=None,
                     policy=policy, released_by_tag=None, now=AS_OF)
    assert released.tripped and not released.blocks and released.release.released_by == "sam"
    again = check(con, "welcome", as_of=AS_OF + timedelta(hours=1), due=500, newest_event_at=None,
                  policy=policy, released_by_tag=None, now=AS_OF)
    assert again.blocks
    # a released tick is history (a person said that volume is fine): the median of 1, 1, 1, 500
    assert again.judgement.median == 1


def test_released_ticks_teach_the_breaker_a_new_normal():
    con = duckdb.connect()
    policy = BreakerPolicy(surge_floor=10, trailing_ticks=5, min_history=3, max_event_age=None)
    for hours in range(3):
        check(con, "welcome", as_of=AS_OF + timedelta(hours=hours), due=10, newest_event_at=None, policy=policy,
              released_by_tag=None, now=AS_OF)
    tripped = []
    for hours in range(3, 9):  # the product grew tenfold overnight; each tripped tick released in the UI
        state = check(con, "welcome", as_of=AS_OF + timedelta(hours=hours), due=100, newest_event_at=None,
                      policy=policy, released_by_tag="ops", now=AS_OF)
        tripped.append(state.tripped)
    assert tripped == [True, True, True, False, False, False]


def test_the_project_configures_it_and_a_typo_fails_loudly(tmp_path: Path):
    project = Path(__file__).resolve().parents[2] / "dbt_project"
    assert load_policy(project).breaker == BreakerPolicy()  # the YAML states the defaults
    (tmp_path / "dbt_project.yml").write_text(
        "vars:\n  nudge:\n    circuit_breaker:\n      surge_multiple: 3\n      max_event_age: 12h\n"
    )
    policy = load_policy(tmp_path).breaker
    assert (policy.surge_multiple, policy.max_event_age, policy.surge_floor) == (3, timedelta(hours=12), 100)
    for bad in ("surge_multipel: 3", "max_event_age: soon", "min_history: 30"):
        (tmp_path / "dbt_project.yml").write_text(f"vars:\n  nudge:\n    circuit_breaker:\n      {bad}\n")
        with pytest.raises(AutomationConfigError, match="circuit_breaker"):
            load_policy(tmp_path)
