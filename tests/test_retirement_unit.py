"""The retire policy (``rotation/retirement.py``): a pure function of time and observation.

Times are injected (``T0`` + offsets); observations are the ``Adoption``/``Usage``
values a rotator's ``usage()`` returns, or the error it raised. The same policy is
exercised against real PostgreSQL in ``test_rotation_database.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from maily_secrets.rotation.base import Adoption, CredentialUser, RotationError, Usage
from maily_secrets.rotation.config import DEFAULT_MIN_GRACE, RotationConfig, TypeConfig
from maily_secrets.rotation.retirement import RetireItem, RetirePolicy, decide

T0 = datetime(2030, 1, 15, 3, 0, tzinfo=UTC)
M = timedelta(minutes=1)
ITEM = RetireItem(promoted_at=T0)

WHEN_IDLE = RetirePolicy("when_idle", min_grace=5 * M, grace=60 * M)
WHEN_IDLE_DEADLINE = RetirePolicy("when_idle", 5 * M, 60 * M, hard_deadline=120 * M)
AT_GRACE = RetirePolicy("at_grace", 5 * M, 60 * M)
AT_GRACE_DEADLINE = RetirePolicy("at_grace", 5 * M, 60 * M, hard_deadline=120 * M)
NEVER = RetirePolicy("never", 5 * M, 60 * M)

WORKER = CredentialUser(2, "legacy-worker", "10.0.0.7")
HIDDEN = CredentialUser(1, "", None)


def seen(*users: CredentialUser) -> Adoption:
    return Adoption(
        current=Usage("app_b", users=(CredentialUser(4, "api", "10.0.0.9"),)),
        previous=Usage("app_a", users=users),
    )


IDLE = seen()
USED = seen(WORKER)
NOT_OBSERVABLE = Adoption(None, Usage("maily", observable=False, note="one user, two passwords"))
UNREACHABLE = RotationError("database usage: cannot connect to rot@db:5432/maily")


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# ---------------------------------------------------------------------------- when_idle
def test_when_idle_waits_for_min_grace_even_when_idle() -> None:
    d = decide(WHEN_IDLE, at(4), ITEM, IDLE)
    assert d.action == "wait" and d.next_check == at(5)
    assert "min_grace" in d.reason


def test_when_idle_retires_once_idle_after_min_grace() -> None:
    d = decide(WHEN_IDLE, at(5), ITEM, IDLE)
    assert (d.action, d.stragglers, d.end_sessions) == ("retire", (), False)


def test_when_idle_waits_while_used_and_names_the_users() -> None:
    d = decide(WHEN_IDLE, at(30), ITEM, USED)
    assert d.action == "wait" and d.stragglers == (WORKER,)
    assert "legacy-worker from 10.0.0.7" in d.reason
    assert d.next_check == at(60)


def test_when_idle_keeps_waiting_past_the_grace_without_a_deadline() -> None:
    d = decide(WHEN_IDLE, at(600), ITEM, USED)
    assert d.action == "wait" and d.stragglers == (WORKER,)
    assert "grace ended" in d.reason and "no hard deadline" in d.reason
    assert d.next_check is None  # only an observation can change it now


def test_when_idle_past_the_grace_with_a_deadline_waits_for_it() -> None:
    d = decide(WHEN_IDLE_DEADLINE, at(90), ITEM, USED)
    assert d.action == "wait" and d.next_check == at(120)
    assert "until the hard deadline" in d.reason


def test_when_idle_at_the_hard_deadline_retires_ending_sessions() -> None:
    d = decide(WHEN_IDLE_DEADLINE, at(120), ITEM, USED)
    assert d.action == "retire_ending_sessions" and d.end_sessions and d.retires
    assert d.stragglers == (WORKER,)


def test_when_idle_at_the_hard_deadline_but_idle_just_retires() -> None:
    d = decide(WHEN_IDLE_DEADLINE, at(121), ITEM, IDLE)
    assert d.action == "retire" and not d.end_sessions


def test_when_idle_unobservable_target_behaves_like_at_grace() -> None:
    for observed in (None, NOT_OBSERVABLE, Adoption(None, None)):
        before = decide(WHEN_IDLE, at(59), ITEM, observed)
        assert before.action == "wait" and before.next_check == at(60), observed
        assert "cannot tell" in before.reason
        after = decide(WHEN_IDLE, at(60), ITEM, observed)
        assert after.action == "retire" and not after.keep, observed


def test_when_idle_unreachable_target_is_never_taken_for_idle() -> None:
    for minutes in (5, 59, 60, 600):
        d = decide(WHEN_IDLE, at(minutes), ITEM, UNREACHABLE)
        assert d.action == "wait", minutes
        assert "RotationError" in d.reason and "cannot connect" in d.reason


def test_when_idle_unreachable_target_at_the_hard_deadline_still_retires() -> None:
    d = decide(WHEN_IDLE_DEADLINE, at(120), ITEM, UNREACHABLE)
    assert d.action == "retire_ending_sessions"
    assert "cannot see who uses it" in d.reason


def test_hidden_addresses_are_named_as_hidden() -> None:
    d = decide(WHEN_IDLE, at(30), ITEM, seen(HIDDEN))
    assert "(no name) from (address hidden)" in d.reason


def test_users_with_zero_count_are_no_stragglers() -> None:
    d = decide(WHEN_IDLE, at(30), ITEM, seen(CredentialUser(0, "gone", "10.0.0.1")))
    assert d.action == "retire" and d.stragglers == ()


# ---------------------------------------------------------------------------- at_grace
def test_at_grace_waits_until_the_grace_ends_even_when_idle() -> None:
    for observed in (IDLE, USED, None, UNREACHABLE):
        d = decide(AT_GRACE, at(59), ITEM, observed)
        assert d.action == "wait" and d.next_check == at(60), observed


def test_at_grace_retires_at_the_end_of_the_grace_naming_stragglers() -> None:
    d = decide(AT_GRACE, at(60), ITEM, USED)
    assert d.action == "retire" and not d.end_sessions and not d.keep
    assert d.stragglers == (WORKER,)
    assert "legacy-worker from 10.0.0.7" in d.reason


def test_at_grace_retires_even_when_the_target_cannot_be_reached() -> None:
    d = decide(AT_GRACE, at(61), ITEM, UNREACHABLE)
    assert d.action == "retire" and d.stragglers == ()


def test_at_grace_with_a_deadline_keeps_a_used_credential_to_end_its_sessions() -> None:
    d = decide(AT_GRACE_DEADLINE, at(60), ITEM, USED)
    assert d.action == "retire" and d.keep
    idle = decide(AT_GRACE_DEADLINE, at(60), ITEM, IDLE)
    assert idle.action == "retire" and not idle.keep

    retired = RetireItem(promoted_at=T0, retired_at=at(60))
    wait = decide(AT_GRACE_DEADLINE, at(90), retired, USED)
    assert wait.action == "wait" and wait.next_check == at(120)
    end = decide(AT_GRACE_DEADLINE, at(120), retired, USED)
    assert end.action == "retire_ending_sessions" and end.stragglers == (WORKER,)
    assert decide(AT_GRACE_DEADLINE, at(90), retired, IDLE).action == "forget"
    # unknown at the deadline: try again, never guess
    assert decide(AT_GRACE_DEADLINE, at(120), retired, UNREACHABLE).action == "wait"
    # a target that cannot tell is retired at the grace and not kept (nothing to end)
    blind = decide(AT_GRACE_DEADLINE, at(60), ITEM, None)
    assert blind.action == "retire" and not blind.keep


def test_at_grace_past_the_deadline_without_retiring_first_ends_sessions() -> None:
    d = decide(AT_GRACE_DEADLINE, at(500), ITEM, USED)
    assert d.action == "retire_ending_sessions"


# ---------------------------------------------------------------------------- never
def test_never_keeps_forever_and_still_names_users() -> None:
    for minutes in (0, 60, 10_000_000):
        d = decide(NEVER, at(minutes), ITEM, USED)
        assert d.action == "keep_forever" and d.stragglers == (WORKER,)
    assert decide(NEVER, at(10**6), ITEM, IDLE).action == "keep_forever"


# ---------------------------------------------------------------------------- config
def test_policy_from_config_defaults() -> None:
    tc = TypeConfig(secret="config", grace="1h")
    p = RetirePolicy.of(tc)
    assert p == RetirePolicy("when_idle", DEFAULT_MIN_GRACE, timedelta(hours=1), None)
    # a grace shorter than the default min_grace caps it
    assert RetirePolicy.of(TypeConfig(secret="c", grace="30s")).min_grace == timedelta(seconds=30)
    assert RetirePolicy.of(TypeConfig(secret="c")).min_grace == timedelta(0)
    tc = TypeConfig(secret="c", grace="1h", retire="at_grace", min_grace="10m", hard_deadline="2h")
    assert RetirePolicy.of(tc) == RetirePolicy("at_grace", 10 * M, 60 * M, hard_deadline=120 * M)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"grace": "1h", "min_grace": "2h"}, "min_grace 2h is longer than grace 1h"),
        ({"min_grace": "1m"}, "min_grace 1m is longer than grace 0s"),
        ({"grace": "1h", "hard_deadline": "30m"}, "hard_deadline 30m is shorter than grace 1h"),
        ({"grace": "1h", "retire": "never", "hard_deadline": "2h"}, "retire: never"),
        ({"retire": "sometimes"}, "when_idle"),
    ],
)
def test_bad_retire_settings_are_refused_with_a_clear_error(
    tmp_path: object, fields: dict[str, str], message: str
) -> None:
    import yaml

    from maily_secrets.rotation.config import ConfigError

    doc = {
        "defaults": {"intervals": {"database": "30d"}},
        "types": {"database": {"secret": "config", **fields}},
        "environments": {"development": {}},
    }
    path = tmp_path / "rotation.yaml"  # type: ignore[operator]
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as err:
        RotationConfig.load(path)
    assert "types.database" in str(err.value) and message in str(err.value)


def test_the_default_config_loads_with_its_retire_settings() -> None:
    cfg = RotationConfig.load()
    db = cfg.types["database"]
    assert db.retire == "when_idle"
    assert RetirePolicy.of(db).min_grace <= (db.grace or timedelta(0))
