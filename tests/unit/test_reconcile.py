"""The reconcile loop's decisions, which need no process (plan/backoff.py, plan/conditions.py): backoff per
target, which changes a pass may act on, and the conditions it derives."""

from __future__ import annotations

from rbee.api.state import HiveObservation, HiveState, HiveStatus, ObservedState, WorkerInfo, WorkerState
from rbee.plan import backoff
from rbee.plan import conditions as cond
from rbee.plan.actions import Action, Change, Plan, Symbol

START = Change(
    "a/workers/m:auto:auto/start",
    Action.START_WORKERS,
    Symbol.ADD,
    "a",
    "workers m",
    "0/1 running; start 1",
    model="m",
    backend="auto",
    device="auto",
    replicas=1,
)
MODEL = Change("a/model/m", Action.ADD_MODEL, Symbol.ADD, "a", "model m", "not in the catalog", model="m")
START_AFTER_MODEL = START._replace(requires=(MODEL.id,))
HIVE_OK = Change("a/hive", Action.NOTHING, Symbol.NOTHING, "a", "hive a", "already running rbee 0.1.0")


def test_a_failing_target_backs_off_exponentially_up_to_five_minutes() -> None:
    record = backoff.Record({}, {})
    plan = Plan((HIVE_OK, START))
    now, delays = 1000.0, []
    for _ in range(12):
        runnable, held = backoff.gate(plan, record.attempts, now)
        assert START in runnable and not held
        record = backoff.account(record, plan, {START.id: "worker failed to start"}, now)
        tries = record.attempts[cond.change_key(START)]
        delays.append(tries.retry_at - now)
        assert backoff.gate(plan, record.attempts, tries.retry_at - 0.01)[1] == [START], "held back until retry_at"
        now = tries.retry_at
    assert delays == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300, 300]
    assert record.attempts[cond.change_key(START)].last_error == "worker failed to start"


def test_a_held_back_change_holds_back_its_dependants() -> None:
    plan = Plan((HIVE_OK, MODEL, START_AFTER_MODEL))
    record = backoff.account(backoff.Record({}, {}), plan, {MODEL.id: "404 repo"}, 0.0)
    runnable, held = backoff.gate(plan, record.attempts, 1.0)
    assert runnable == (HIVE_OK,) and held == [MODEL, START_AFTER_MODEL]


def test_a_target_converged_for_a_minute_forgets_its_restarts() -> None:
    record = backoff.Record({}, {})
    acted, settled = Plan((START,)), Plan((START._replace(action=Action.NOTHING, symbol=Symbol.NOTHING),))
    for t in (0.0, 10.0, 30.0):
        record = backoff.account(record, acted, {START.id: None}, t)
    assert record.attempts[cond.change_key(START)].count == 3
    record = backoff.account(record, settled, {}, 100.0)
    record = backoff.account(record, settled, {}, 150.0)
    assert cond.change_key(START) in record.attempts, "not yet a minute"
    record = backoff.account(record, settled, {}, 160.0)
    assert cond.change_key(START) not in record.attempts


def observed(status: HiveStatus = HiveStatus.RUNNING, workers: tuple[WorkerInfo, ...] = ()) -> ObservedState:
    state = HiveState(name="a", version="0.1.0", workers=workers) if status is HiveStatus.RUNNING else None
    return ObservedState(hives=(HiveObservation(name="a", status=status, reason="no answer", state=state),))


def test_conditions_say_what_each_target_is_doing() -> None:
    nothing = START._replace(
        id="a/workers/m:auto:auto", action=Action.NOTHING, symbol=Symbol.NOTHING, reason="already running 1/1"
    )
    loading = WorkerInfo(id="w-1", model="m", backend="gguf", state=WorkerState.LOADING)
    found = cond.derive(Plan((HIVE_OK, nothing)), observed(workers=(loading,)), {}, {}, {}, 50.0)
    assert found["a/hive a"].type is cond.ConditionType.READY and found["a/hive a"].reason == "Converged"
    assert found["a/workers m"].type is cond.ConditionType.PROGRESSING and found["a/workers m"].reason == "Loading"

    failed = cond.derive(
        Plan((HIVE_OK, START)),
        observed(),
        {START.id: "no such device"},
        {"a/workers m": cond.Attempts(1, "no such device", 52.0)},
        found,
        50.0,
    )
    assert failed["a/workers m"].type is cond.ConditionType.DEGRADED
    assert failed["a/workers m"].message == "no such device; next try in 2 s"
    assert failed["a/hive a"].since == found["a/hive a"].since == 50.0

    later = cond.derive(
        Plan((HIVE_OK, START)), observed(), {}, {"a/workers m": cond.Attempts(1, "no such device", 52.0)}, failed, 51.0
    )
    assert later["a/workers m"].reason == "BackOff" and "last error: no such device" in later["a/workers m"].message
    assert later["a/workers m"].since == 50.0, "still Degraded since the first failure"

    looping = cond.derive(
        Plan((HIVE_OK, START)), observed(), {START.id: None}, {"a/workers m": cond.Attempts(3, None, 60.0)}, {}, 55.0
    )
    assert looping["a/workers m"].reason == "CrashLoop"

    wait = Change("a/hive", Action.WAIT, Symbol.BLOCKED, "a", "hive a", "unreachable: no answer")
    gone = cond.derive(Plan((wait,)), observed(HiveStatus.UNREACHABLE), {}, {}, {}, 70.0)
    assert gone["a/hive a"].type is cond.ConditionType.UNREACHABLE and gone["a/hive a"].reason == "HiveUnreachable"
