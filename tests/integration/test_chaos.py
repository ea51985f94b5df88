"""Faults and attackers on the real stack (RELIABILITY.md), driven through the Docker SDK by the
chaos suite's own code (scripts/chaos.py), so `make chaos` and this tier check the same things.

CI time: one 7-round run carries five faults (hospital killed, hospital paused past the deadline,
metrics stopped, hospital cut off the network, aggregator killed) plus the replay probe; one short
run loses its quorum; the attack comparison is three 3-round runs (clean Multi-Krum, FedAvg and
Multi-Krum with a scaling attacker) through the session stack.
The fault runs use their own compose project and ports (the session stack's + "c" / +1), started
through `make up` like every other run."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.integration.conftest import AGGREGATOR_PORT, METRICS_PORT, PROJECT, ROOT, docker_available

ROUND_TIMEOUT = 90  # a first fit loads the data and builds the model: over 60 s on a busy 2-core host


def _chaos_module():
    spec = importlib.util.spec_from_file_location("hemafed_chaos", ROOT / "scripts" / "chaos.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["hemafed_chaos"] = mod
    spec.loader.exec_module(mod)
    return mod


chaos = _chaos_module()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    if not docker_available():
        pytest.skip("no Docker engine: run `make test` (it installs and starts Docker) for the integration tier")
    s = chaos.LiveStack(project=f"{PROJECT}c", metrics_port=METRICS_PORT + 1, aggregator_port=AGGREGATOR_PORT + 1,
                        workdir=tmp_path_factory.mktemp("chaos"))
    yield s
    s.down()


@pytest.fixture(scope="module")
def faults(live):
    outcomes = chaos.run_faults(live, rounds=7, round_timeout=ROUND_TIMEOUT, clean_acc=None)
    return {o.fault.split(" (")[0]: o for o in outcomes}


@pytest.fixture(scope="module")
def quorum(live, faults):  # after the fault run: one stack of ours at a time
    return chaos.run_quorum(live, round_timeout=ROUND_TIMEOUT, wait_s=20)


def _assert_checks(o) -> None:
    failed = [k for k, v in o.checks.items() if not v]
    assert o.checks and not failed, f"{o.fault}: {failed} ({o.what_happened})"


def test_a_killed_hospital_is_left_out_and_rejoins(faults):
    o = faults["hospital-2 killed mid-round"]
    _assert_checks(o)
    assert "round 2 went on with 2/3" in o.what_happened


def test_a_paused_hospitals_late_update_is_refused(faults):
    o = faults["hospital-3 paused past the deadline"]
    _assert_checks(o)
    assert "'timeout'" in o.what_happened


def test_metrics_outage_loses_no_report(faults):
    o = faults["metrics service stopped"]
    _assert_checks(o)
    assert o.rounds_lost == "0 round(s) missing from metrics"


def test_a_disconnected_hospital_rejoins(faults):
    _assert_checks(faults["hospital-1 disconnected from the network"])


def test_a_killed_aggregator_resumes_from_the_last_completed_round(faults):
    o = faults["aggregator killed mid-round"]
    _assert_checks(o)
    assert o.rounds_lost == "0 completed round(s) lost"


def test_replayed_and_stale_fit_requests(faults):
    o = faults["replayed / duplicated /fit"]
    _assert_checks(o)
    assert "HTTP 409" in o.what_happened and "older than round 7" in o.what_happened


def test_too_few_hospitals_wait_then_fail_cleanly(quorum):
    _assert_checks(quorum)
    assert "waiting_for_clients" in quorum.what_happened


# --------------------------------------------------------------------------- attackers

#: the chaos suite's attack runs: 3 hospitals, 28 px, one local epoch, 3 rounds (through `make up`)
ATTACK_RUN = dict(clients=3, rounds=3, split="iid", local_epochs=1, image_size=28)


def _accuracy(stack, run) -> float:
    info = {x["id"]: x for x in stack.api("/api/runs").json()}[run.run_id]
    assert info["status"] == "finished"
    return info["test_accuracy"]


def _flags(stack, run, hospital):
    rounds = stack.api(f"/api/runs/{run.run_id}/rounds").json()
    mine = [r["report"]["outliers"][hospital]["flagged"] for r in rounds]
    others = [o["flagged"] for r in rounds for h, o in r["report"]["outliers"].items() if h != hospital]
    return mine, others


#: Multi-Krum (Blanchard et al. 2017) keeping the 2 updates closest to the others, f = 0 (n = 3 > 2f + 2)
MULTIKRUM = '{"num_byzantine": 0, "num_selected": 2}'


def test_a_scaling_attacker_hurts_fedavg_not_multikrum_and_is_flagged(stack):
    """Measured by `make chaos` on this configuration (RELIABILITY.md): FedAvg falls to chance, Multi-Krum
    ends above its clean run (it averages the two honest updates), the attacker is flagged every round."""
    clean = stack.up("attack-clean-multikrum", **ATTACK_RUN, strategy="multikrum", strategy_params=MULTIKRUM)
    fedavg = stack.up("attack-fedavg-scale", **ATTACK_RUN, attack="scale", attacker="hospital-3")
    robust = stack.up("attack-multikrum-scale", **ATTACK_RUN, strategy="multikrum", strategy_params=MULTIKRUM,
                      attack="scale", attacker="hospital-3")
    acc_clean, acc_fedavg, acc_robust = (_accuracy(stack, r) for r in (clean, fedavg, robust))
    assert acc_robust >= acc_clean - 0.02, (acc_clean, acc_robust)  # robust aggregation holds
    assert acc_fedavg < acc_robust - 0.20, (acc_fedavg, acc_robust)  # plain FedAvg shows the damage
    for run in (fedavg, robust):
        mine, honest = _flags(stack, run, "hospital-3")
        assert mine == [True, True, True] and not any(honest), (mine, honest)
