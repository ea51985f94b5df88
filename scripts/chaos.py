#!/usr/bin/env python3
"""The chaos suite: faults and attackers against the live Docker Compose stack (RELIABILITY.md).

``make chaos`` runs it. Every run goes through ``make up`` (the README's own path, so it gets
whatever the stack uses: TLS, enrolment, images), started in the background; faults are made
with the Docker SDK while the run goes on and observed through the aggregator's ``/api/status``,
the metrics API and ``results/<run>/run.json``:

* ``faults`` (one run): hospital-2 killed (SIGKILL, as a crash: its restart policy brings it
  back) in round 2; hospital-3 paused past the round deadline in round 3; the metrics service
  stopped for rounds 4-5; hospital-1 disconnected from the compose network for round 5 (cut
  as soon as its round-4 update is in); the aggregator killed in round 6 (it restarts and resumes
  from its checkpoint; the hospitals answer the repeated round from memory); afterwards a
  replayed old-round /fit is sent to a hospital.
* ``quorum`` (one short run): hospitals 2 and 3 stopped after round 1: the run waits with a
  clear status, then fails after WAIT_FOR_CLIENTS.
* ``attacks``: one hospital of three poisons its updates (sign_flip, scale, noise, label_flip);
  each attack with plain FedAvg and with a robust strategy, against clean runs of both.
* ``clean``: the fault run's configuration without faults (the accuracy reference).

It writes ``<out>/chaos.md`` (the table: fault, what happened, rounds lost, accuracy vs the clean
run) and ``<out>/chaos.csv``, plus ``<out>/chaos.json`` with every observation. Exit status 0
when every check held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
HOSPITALS = ["hospital-1", "hospital-2", "hospital-3"]
ATTACKS = ["sign_flip", "scale", "noise", "label_flip"]


class ChaosError(Exception):
    pass


@dataclass
class Outcome:
    scenario: str
    fault: str
    what_happened: str
    rounds_lost: str
    accuracy: float | None = None
    clean_accuracy: float | None = None
    ok: bool = True
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def vs_clean(self) -> str:
        if self.accuracy is None or self.clean_accuracy is None:
            return "n/a"
        return f"{self.accuracy:.3f} vs {self.clean_accuracy:.3f} ({100 * (self.accuracy - self.clean_accuracy):+.1f} pts)"


# --------------------------------------------------------------------------- the live stack


class LiveStack:
    """One compose project of ours: `make up` in the background, the Docker SDK for faults."""

    def __init__(self, *, project: str, metrics_port: int, aggregator_port: int, workdir: Path,
                 tag: str | None = None, tls: bool = True, log: Callable[[str], None] = print) -> None:
        import docker  # the Docker SDK (requirements-dev.txt)

        self.project, self.metrics_port, self.aggregator_port = project, metrics_port, aggregator_port
        self.workdir = workdir
        self.tag = tag
        self.tls = tls
        self.certs = workdir / "certs"
        self.results = workdir / "results"
        self.log = log
        self.docker = docker.from_env()
        self.proc: subprocess.Popen | None = None
        self.run_id: str | None = None
        self.scheme = "https" if tls else "http"

    # -- make / compose

    def env(self) -> dict[str, str]:
        return {**os.environ, "COMPOSE_PROJECT_NAME": self.project, "METRICS_PORT": str(self.metrics_port),
                "AGGREGATOR_PORT": str(self.aggregator_port), "CERTS_DIR": str(self.certs)}

    def make_args(self, target: str, **make_vars: Any) -> list[str]:
        args = ["make", "--no-print-directory", target, f"DATA_MOUNTS={self.workdir / 'data'}",
                f"RESULTS_DIR={self.results}", f"TLS={'on' if self.tls else 'off'}"]
        if self.tag:
            args.append(f"HEMAFED_TAG={self.tag}")
        return args + [f"{k.upper()}={v}" for k, v in make_vars.items()]

    def start(self, run_id: str, timeout: float = 900, attempts: int = 2, **make_vars: Any) -> None:
        """`make up` in the background; returns once the aggregator runs this RUN_ID. A start that fails
        (e.g. a health check timing out on a loaded host) is tried again, ``attempts`` times in all."""
        for attempt in range(1, attempts + 1):
            self.stop_follow()
            self.run_id = run_id
            self.workdir.mkdir(parents=True, exist_ok=True)
            log_path = self.workdir / f"{run_id}.make.{attempt}.log"
            with open(log_path, "w") as out:
                self.proc = subprocess.Popen(self.make_args("up", RUN_ID=run_id, CLIENTS=3, **make_vars), cwd=ROOT,
                                             env=self.env(), stdout=out, stderr=subprocess.STDOUT)
            try:
                self.wait(lambda s: s.get("run_id") == run_id, timeout, f"aggregator of {run_id} up",
                          fail=lambda: self.proc is not None and self.proc.poll() not in (None, 0)
                          and f"`make up` exited {self.proc.returncode}: see {log_path}")
            except ChaosError as exc:
                if attempt == attempts:
                    raise
                self.log(f"[{run_id}] start failed ({exc}); trying again")
                continue
            self.log(f"[{run_id}] started")
            return

    def stop_follow(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def down(self) -> None:
        self.stop_follow()
        cmd = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
        subprocess.run([*cmd, "-p", self.project, "--profile", "h10", "down", "-v", "--remove-orphans"], cwd=ROOT,
                       env=self.env() | _compose_placeholders(self), capture_output=True, timeout=300)

    # -- observation

    def _verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=str(self.certs / "ca.pem")) if self.tls else False

    def status(self) -> dict[str, Any] | None:
        try:
            r = httpx.get(f"{self.scheme}://127.0.0.1:{self.aggregator_port}/api/status", verify=self._verify(),
                          timeout=5)
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, OSError):
            return None

    def metrics_rounds(self) -> list[dict[str, Any]] | None:
        try:
            r = httpx.get(f"{self.scheme}://127.0.0.1:{self.metrics_port}/api/runs/{self.run_id}/rounds",
                          verify=self._verify(), timeout=10)
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, OSError):
            return None

    def metrics_run(self) -> dict[str, Any] | None:
        try:
            r = httpx.get(f"{self.scheme}://127.0.0.1:{self.metrics_port}/api/runs/{self.run_id}",
                          verify=self._verify(), timeout=10)
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, OSError):
            return None

    def run_json(self) -> dict[str, Any]:
        return json.loads((self.results / str(self.run_id) / "run.json").read_text())

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str,
             fail: Callable[[], str | bool] | None = None) -> dict[str, Any]:
        """Poll the aggregator's status (every second, bounded) until ``pred`` holds."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            s = self.status()
            if s is not None:
                last = s
                if pred(s):
                    return s
                if s.get("run_id") == self.run_id and s.get("status") == "failed" and "failed" not in what:
                    raise ChaosError(f"{what}: the run failed: {s.get('message')}")
            if fail is not None and (why := fail()):
                raise ChaosError(f"{what}: {why}")
            time.sleep(1.0)
        raise ChaosError(f"{what}: not within {timeout:.0f}s (last status: {_brief(last)})")

    def wait_end(self, timeout: float = 1200) -> dict[str, Any]:
        return self.wait(lambda s: s.get("run_id") == self.run_id and s.get("status") in ("finished", "failed"),
                         timeout, f"end of run {self.run_id} (finished or failed)")

    def hospital_training(self, rnd: int, hospital: str) -> Callable[[dict[str, Any]], bool]:
        return lambda s: (s.get("round") == rnd and s.get("status") == "running"
                          and s["hospitals"].get(hospital, {}).get("status") == "training")

    # -- faults (Docker SDK)

    def container(self, service: str):
        found = self.docker.containers.list(all=True, filters={"label": [
            f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]})
        if not found:
            raise ChaosError(f"no container for service {service} in project {self.project}")
        return found[0]

    def crash(self, service: str) -> None:
        """SIGKILL the container's main process from the host: a crash, so its restart policy applies
        (``docker kill`` counts as a manual stop). Falls back to the SDK's kill + start without root."""
        c = self.container(service)
        c.reload()
        pid = c.attrs["State"]["Pid"]
        try:
            os.kill(pid, signal.SIGKILL)
        except PermissionError:
            c.kill()
            c.start()
        self.log(f"[{self.run_id}] {service} crashed (SIGKILL)")

    def healthy(self, service: str) -> bool:
        c = self.container(service)
        c.reload()
        return c.attrs["State"].get("Health", {}).get("Status") == "healthy"

    def network(self):
        return self.docker.networks.get(f"{self.project}_default")

    def fit_request(self, hospital: str, rnd: int, run_dir: Path) -> httpx.Response:
        """POST /fit to a hospital as the aggregator does (its certificate and token): round ``rnd`` of
        this run, with the run's exact task (from its checkpoint) and its best weights."""
        sys.path.insert(0, str(ROOT / "shared"))
        from hemafed.exchange import ModelExchange
        from hemafed.schemas import FitConfig, FitInstructions, TaskSpec

        weights = ModelExchange.from_bytes((run_dir / "best.safetensors").read_bytes()).weights
        task = TaskSpec.model_validate(json.loads((run_dir / "checkpoint" / "checkpoint.json").read_text())["task"])
        body = ModelExchange(weights=weights, round=rnd, extra={
            "instructions": FitInstructions(task=task, config=FitConfig(local_epochs=1)).model_dump(mode="json"),
            "run_id": self.run_id}).to_bytes()
        c = self.container(hospital)
        c.reload()
        port = c.attrs["NetworkSettings"]["Ports"]["8000/tcp"][0]["HostPort"]
        verify: ssl.SSLContext | bool = False
        headers = {"content-type": "application/octet-stream"}
        if self.tls:
            verify = ssl.create_default_context(cafile=str(self.certs / "ca.pem"))
            verify.check_hostname = False  # the certificate names hospital-k; we dial 127.0.0.1
            verify.load_cert_chain(str(self.certs / "aggregator" / "cert.pem"), str(self.certs / "aggregator" / "key.pem"))
            token = json.loads((self.certs / "aggregator" / "credentials.json").read_text())[hospital]
            headers["authorization"] = f"Bearer {token}"
        return httpx.post(f"{self.scheme}://127.0.0.1:{port}/fit", content=body, headers=headers, verify=verify,
                          timeout=120)

    def logs(self, service: str) -> str:
        return self.container(service).logs().decode(errors="replace")


def _compose_placeholders(stack: LiveStack) -> dict[str, str]:
    """Values the compose file requires (${VAR:?}) for a plain `down` outside `make`."""
    text = (ROOT / "docker-compose.yml").read_text()
    import re

    names = set(re.findall(r"\$\{([A-Z_]+):\?\}", text))
    env = {n: "x" for n in names}
    env.update(CERTS_DIR=str(stack.certs), DATA_MOUNTS="/nonexistent", RESULTS_DIR="/nonexistent",
               METRICS_PORT=str(stack.metrics_port), AGGREGATOR_PORT=str(stack.aggregator_port))
    return env


def _brief(s: dict[str, Any] | None) -> str:
    if not s:
        return "unreachable"
    hs = ",".join(f"{h}:{v['status']}" for h, v in sorted(s.get("hospitals", {}).items()))
    return f"{s.get('run_id')} {s.get('status')} round {s.get('round')} ({s.get('rounds_completed')} done) {hs} {s.get('message', '')}"


def _test_accuracy(s: dict[str, Any]) -> float | None:
    return s.get("test_accuracy") if s.get("status") == "finished" else None


def _statuses(rounds: list[dict[str, Any]], hospital: str) -> list[str]:
    return [r["hospitals"].get(hospital, {}).get("status", "?") for r in rounds]


# --------------------------------------------------------------------------- scenarios

FAULT_VARS = dict(IMAGE_SIZE=28, LOCAL_EPOCHS=1, SPLIT="iid", SEED=0, MIN_CLIENTS=2, STRATEGY="fedavg")


def run_clean(stack: LiveStack, rounds: int, timeout_s: int, tag: str = "clean") -> tuple[float | None, dict]:
    run_id = f"chaos-{tag}-{int(time.time())}"
    stack.start(run_id, ROUNDS=rounds, ROUND_TIMEOUT=timeout_s, **FAULT_VARS)
    s = stack.wait_end()
    if s["status"] != "finished":
        raise ChaosError(f"clean run {run_id} failed: {s.get('message')}")
    return _test_accuracy(s), s


def run_faults(stack: LiveStack, rounds: int, round_timeout: int, clean_acc: float | None) -> list[Outcome]:
    """One run, a fault in most rounds (see the module docstring). Round numbers after the pause are
    relative to it (P): metrics down in P+1..P+2, hospital-1 cut off in P+2, aggregator killed in P+3."""
    assert rounds >= 7, "the fault run needs 7 rounds"
    run_id = f"chaos-faults-{int(time.time())}"
    stack.start(run_id, ROUNDS=rounds, ROUND_TIMEOUT=round_timeout, WAIT_FOR_CLIENTS=120, **FAULT_VARS)
    t: dict[str, float] = {}

    # round 2: hospital-2 crashes while training
    stack.wait(stack.hospital_training(2, "hospital-2"), 600, "round 2 training on hospital-2")
    stack.crash("hospital-2")
    stack.wait(lambda s: s["rounds_completed"] >= 2, 3 * round_timeout, "round 2 done without hospital-2")
    # round P >= 3: hospital-3 frozen past the deadline (paused until the aggregator has timed it out),
    # once hospital-2 is back (the aggregator sent it a fit again: its health answers, whatever docker's
    # health check with its start period says under load)
    s = stack.wait(lambda s: s["round"] >= 3 and s["hospitals"]["hospital-3"]["status"] == "training"
                   and s["hospitals"]["hospital-2"]["status"] == "training", 600,
                   "hospital-2 back (training again) and hospital-3 training")
    pause_round = int(s["round"])
    h3 = stack.container("hospital-3")
    h3.pause()
    t["pause"] = time.monotonic()
    stack.log(f"[{run_id}] hospital-3 paused in round {pause_round}")
    stack.wait(lambda s: s["hospitals"]["hospital-3"]["status"] == "timeout", 2 * round_timeout + 60,
               f"hospital-3 timed out in round {pause_round}")
    h3.unpause()
    stack.log(f"[{run_id}] hospital-3 unpaused after {time.monotonic() - t['pause']:.0f}s")
    # P+1 .. P+2: metrics down; P+2: hospital-1 cut off the network
    stack.wait(lambda s: s["round"] >= pause_round + 1, 3 * round_timeout, f"round {pause_round + 1} started")
    metrics = stack.container("metrics")
    metrics.stop(timeout=5)
    stack.log(f"[{run_id}] metrics stopped")
    # cut hospital-1 off as soon as its round P+1 update is in (while P+1 validates, or as P+2 starts):
    # waiting for P+2 to start raced with a fit that takes about a second here, so hospital-1 could
    # answer P+2 before the cut (its P+1 validation may fail instead: that round already has its update)
    stack.wait(lambda s: s["round"] >= pause_round + 2
               or s["hospitals"]["hospital-1"].get("last_round", 0) >= pause_round + 1,
               3 * round_timeout, f"hospital-1's round {pause_round + 1} update in")
    net, h1 = stack.network(), stack.container("hospital-1")
    net.disconnect(h1)
    stack.log(f"[{run_id}] hospital-1 disconnected")
    stack.wait(lambda s: s["rounds_completed"] >= pause_round + 2, 4 * round_timeout, f"round {pause_round + 2} done")
    net.connect(h1, aliases=["hospital-1"])
    metrics.start()
    stack.log(f"[{run_id}] hospital-1 reconnected, metrics started")
    # P+3: the aggregator crashes mid-round
    crash_round = pause_round + 3
    stack.wait(lambda s: s["round"] >= crash_round and any(h["status"] == "training" for h in s["hospitals"].values()),
               3 * round_timeout, f"round {crash_round} training")
    before = stack.run_json()
    stack.crash("aggregator")
    t["aggregator_killed"] = time.monotonic()
    stack.wait(lambda s: s.get("resumed_from"), 600, "aggregator restarted and resumed")
    t["aggregator_back"] = time.monotonic()
    end = stack.wait_end()
    state = stack.run_json()
    rounds = stack.metrics_rounds() or []
    run = stack.metrics_run() or {}
    acc = _test_accuracy(end)

    # the replay probe: the hospital refuses round 1 of this run again (it has trained round `rounds`)
    stale = stack.fit_request("hospital-1", 1, stack.results / run_id)
    logs = {h: stack.logs(h) for h in HOSPITALS}
    replayed = [h for h, text in logs.items() if "sent again (same request)" in text]

    series = [r["round"] for r in rounds]
    total = rounds_n(end)
    out: list[Outcome] = []
    st = {h: _statuses(rounds, h) for h in HOSPITALS}

    def at(h: str, r: int) -> str:
        return st[h][r - 1] if len(st[h]) >= r else "?"

    def tried(h: str, r: int) -> list[str]:
        """Hospital h's statuses in round r: the failed attempts (below MIN_CLIENTS, run again), then the final."""
        if len(rounds) < r:
            return []
        attempts = rounds[r - 1].get("report", {}).get("failed_attempts", [])
        return [a["hospitals"].get(h, {}).get("status", "?") for a in attempts] + [at(h, r)]

    def ok_count(r: int) -> int:
        return sum(1 for h in HOSPITALS if at(h, r) == "ok")

    def missed(h: str, r: int) -> str:
        back = _first_ok(st[h], r + 1)
        return f"{(back if isinstance(back, int) else total + 1) - r} round(s) missed by {h}, 0 for the run"

    finished = end["status"] == "finished"
    checks = {"run finished": finished, "round 2 aggregated the others": ok_count(2) >= 2,
              "hospital-2 left out of round 2": tried("hospital-2", 2)[0] != "ok",
              "hospital-2 rejoined": "ok" in st["hospital-2"][2:]}
    out.append(Outcome("faults", "hospital-2 killed mid-round (round 2)",
                       f"round 2 went on with {ok_count(2)}/3 (hospital-2: {' then '.join(tried('hospital-2', 2))}); "
                       f"restarted by its "
                       f"restart policy, ok again from round {_first_ok(st['hospital-2'], 3)}",
                       missed("hospital-2", 2), acc, clean_acc, all(checks.values()), checks))
    p = pause_round
    checks = {f"hospital-3 timed out in round {p}": "timeout" in tried("hospital-3", p),
              f"round {p} aggregated without a late update": ok_count(p) >= 2,
              "hospital-3 rejoined": "ok" in st["hospital-3"][p:]}
    out.append(Outcome("faults", f"hospital-3 paused past the deadline (round {p})",
                       f"round {p}: hospital-3 {' then '.join(tried('hospital-3', p))} "
                       f"({len(tried('hospital-3', p)) - 1} attempt(s) below MIN_CLIENTS run again); left out as "
                       f"'timeout' at the {round_timeout}s deadline, its late answer never reached a round (the "
                       f"request is cancelled; a reply must carry the current round); ok again from round "
                       f"{_first_ok(st['hospital-3'], p + 1)}",
                       missed("hospital-3", p), acc, clean_acc, all(checks.values()), checks))
    checks = {"every round in the metrics series once": series == list(range(1, total + 1)),
              "run marked finished in metrics": run.get("status") == "finished"}
    out.append(Outcome("faults", f"metrics service stopped (rounds {p + 1}-{p + 2})",
                       f"training went on; reports buffered, delivered (or re-sent on resume) when it returned: "
                       f"series {series}", f"{total - len(set(series))} round(s) missing from metrics", acc,
                       clean_acc, all(checks.values()), checks))
    checks = {f"hospital-1 left out of round {p + 2}": tried("hospital-1", p + 2)[0] != "ok",
              "hospital-1 rejoined": "ok" in st["hospital-1"][p + 2:]}
    out.append(Outcome("faults", f"hospital-1 disconnected from the network (round {p + 2}), reconnected",
                       f"round {p + 2} went on with {ok_count(p + 2)}/3 (hospital-1: "
                       f"{' then '.join(tried('hospital-1', p + 2))}); "
                       f"ok again from round {_first_ok(st['hospital-1'], p + 3)}",
                       missed("hospital-1", p + 2), acc, clean_acc, all(checks.values()), checks))
    done_before = int(before.get("rounds_completed", 0))
    resumed = state.get("resumed_from") or []
    checks = {"resumed from the last completed round": resumed == [done_before],
              "no gap or duplicate in metrics": series == list(range(1, total + 1)), "run finished": finished}
    out.append(Outcome("faults", f"aggregator killed mid-round (round {done_before + 1})",
                       f"restarted by its restart policy; status back in {t['aggregator_back'] - t['aggregator_killed']:.0f}s, "
                       f"resumed from the checkpoint of round {resumed[-1] if resumed else '?'}; round "
                       f"{done_before + 1} run again", f"{done_before - (resumed[-1] if resumed else 0)} completed "
                       f"round(s) lost", acc, clean_acc, all(checks.values()), checks))
    checks = {"old round refused with 409": stale.status_code == 409,
              "repeated round answered from memory": bool(replayed)}
    try:
        detail = str(stale.json().get("detail", ""))
    except ValueError:
        detail = stale.text
    out.append(Outcome("faults", "replayed / duplicated /fit",
                       f"after the resume, the repeated round-{done_before + 1} requests were answered from memory by "
                       f"{', '.join(replayed) or 'none'}; a replayed round-1 request: HTTP {stale.status_code} "
                       f"({detail[:100]})", "0", None, None, all(checks.values()), checks))
    (stack.workdir / f"{run_id}.observed.json").write_text(json.dumps(
        {"status": end, "run_json": state, "metrics_rounds": rounds, "metrics_run": run,
         "pause_round": pause_round}, indent=1, default=str))
    return out


def rounds_n(status: dict[str, Any]) -> int:
    return int(status.get("rounds_total") or 0)


def _first_ok(statuses: list[str], start: int) -> int | str:
    for i in range(start - 1, len(statuses)):
        if statuses[i] == "ok":
            return i + 1
    return "never"


def run_quorum(stack: LiveStack, round_timeout: int, wait_s: int = 25) -> Outcome:
    run_id = f"chaos-quorum-{int(time.time())}"
    # Enough rounds that the run cannot finish before the stops take effect: 28 px rounds take seconds, and a
    # 3-round run once completed on the two hospitals still alive while the third was being stopped.
    stack.start(run_id, ROUNDS=30, ROUND_TIMEOUT=round_timeout, WAIT_FOR_CLIENTS=wait_s, ROUND_RETRIES=1,
                **FAULT_VARS)
    stack.wait(lambda s: s.get("run_id") == run_id and s["rounds_completed"] >= 1 and s["round"] >= 2, 600,
               "round 1 done")
    for h in ("hospital-2", "hospital-3"):
        stack.container(h).stop(timeout=2)
    t0 = time.monotonic()
    stack.log(f"[{run_id}] hospital-2 and hospital-3 stopped")
    waiting = stack.wait(lambda s: s.get("run_id") == run_id and s["status"] == "waiting_for_clients",
                         3 * round_timeout, "waiting status")
    end = stack.wait(lambda s: s.get("run_id") == run_id and s["status"] in ("failed", "finished"),
                     wait_s + 3 * round_timeout + 60,
                     "the run failed cleanly")
    seconds = time.monotonic() - t0
    run = stack.metrics_run() or {}
    checks = {"waited with a clear status": "healthy, need 2" in waiting.get("message", ""),
              "failed, not hung": end["status"] == "failed",
              "failure names MIN_CLIENTS": "MIN_CLIENTS is 2" in end.get("message", ""),
              "metrics says failed": run.get("status") == "failed"}
    return Outcome("quorum", "fewer than MIN_CLIENTS alive (2 of 3 stopped after round 1)",
                   f"status '{waiting['status']}: {waiting.get('message')}'; failed {seconds:.0f}s after the stop "
                   f"(WAIT_FOR_CLIENTS={wait_s}s): '{end.get('message')}'",
                   "the run (by design)", None, None, all(checks.values()), checks)


def run_attack(stack: LiveStack, *, strategy: str, params: str, attack: str, rounds: int, round_timeout: int,
               attacker: str = "hospital-3") -> tuple[float | None, list[dict[str, Any]]]:
    run_id = f"chaos-{strategy}-{attack}-{int(time.time())}"
    stack.start(run_id, ROUNDS=rounds, ROUND_TIMEOUT=round_timeout, STRATEGY_PARAMS=params,
                ATTACK=attack, ATTACKER=attacker if attack != "none" else "none",
                **{**FAULT_VARS, "STRATEGY": strategy})
    end = stack.wait_end()
    if end["status"] != "finished":
        raise ChaosError(f"{run_id} failed: {end.get('message')}")
    return _test_accuracy(end), stack.metrics_rounds() or []


def flagged_rounds(rounds: list[dict[str, Any]], hospital: str) -> tuple[int, int]:
    flagged = sum(1 for r in rounds if (r.get("report", {}).get("outliers", {}).get(hospital) or {}).get("flagged"))
    others = sum(1 for r in rounds for h, o in r.get("report", {}).get("outliers", {}).items()
                 if h != hospital and o.get("flagged"))
    return flagged, others


def run_attacks(stack: LiveStack, attacks: list[str], robust: str, rounds: int, round_timeout: int,
                tolerance: float = 0.02, robust_params: str = "{}") -> list[Outcome]:
    out = []
    params = {"fedavg": "{}", robust: robust_params}
    clean = {s: run_attack(stack, strategy=s, params=params[s], attack="none", rounds=rounds,
                           round_timeout=round_timeout)[0] for s in ("fedavg", robust)}
    stack.log(f"clean accuracies: {clean}")
    for attack in attacks:
        avg_acc, avg_rounds = run_attack(stack, strategy="fedavg", params="{}", attack=attack, rounds=rounds,
                                         round_timeout=round_timeout)
        rob_acc, rob_rounds = run_attack(stack, strategy=robust, params=robust_params, attack=attack, rounds=rounds,
                                         round_timeout=round_timeout)
        flagged, false_flags = flagged_rounds(avg_rounds, "hospital-3")
        checks = {f"{robust} within {100 * tolerance:.0f} pts of its clean run":
                  rob_acc is not None and clean[robust] is not None and rob_acc >= clean[robust] - tolerance}
        out.append(Outcome("attacks", f"hospital-3 {attack}, FedAvg",
                           f"flagged in {flagged}/{len(avg_rounds)} rounds ({false_flags} flags on honest "
                           f"hospitals)", "0", avg_acc, clean["fedavg"], True, {}))
        out.append(Outcome("attacks", f"hospital-3 {attack}, {robust} {robust_params if robust_params != '{}' else ''}".strip(),
                           f"robust aggregation; flagged in {flagged_rounds(rob_rounds, 'hospital-3')[0]}/"
                           f"{len(rob_rounds)} rounds", "0", rob_acc, clean[robust], all(checks.values()), checks))
    return out


# --------------------------------------------------------------------------- report


def write_report(outcomes: list[Outcome], out_dir: Path, command: str, meta: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "chaos.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scenario", "fault", "what_happened", "rounds_lost", "accuracy", "clean_accuracy", "ok"])
        for o in outcomes:
            w.writerow([o.scenario, o.fault, o.what_happened, o.rounds_lost,
                        "" if o.accuracy is None else f"{o.accuracy:.4f}",
                        "" if o.clean_accuracy is None else f"{o.clean_accuracy:.4f}", o.ok])
    lines = [f"# Chaos suite: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             f"Command: `{command}`", "", f"Configuration: {json.dumps(meta)}", "",
             "| fault | what happened | rounds lost | test accuracy vs clean run | checks |",
             "|---|---|---|---|---|"]
    for o in outcomes:
        checks = "; ".join(f"{'ok' if v else 'FAILED'}: {k}" for k, v in o.checks.items()) or "-"
        lines.append(f"| {o.fault} | {o.what_happened.replace('|', '/')} | {o.rounds_lost} | {o.vs_clean} | {checks} |")
    (out_dir / "chaos.md").write_text("\n".join(lines) + "\n")
    (out_dir / "chaos.json").write_text(json.dumps([asdict(o) for o in outcomes], indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default="clean,faults,quorum,attacks",
                   help="comma list of clean, faults, quorum, attacks")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "chaos")
    p.add_argument("--workdir", type=Path, default=None, help="data mounts, certs, results of the runs")
    p.add_argument("--project", default="hfchaos")
    p.add_argument("--metrics-port", type=int, default=38090)
    p.add_argument("--aggregator-port", type=int, default=38080)
    p.add_argument("--tag", default=None, help="HEMAFED_TAG of the images (default: the Makefile's)")
    p.add_argument("--tls", choices=["on", "off"], default="on")
    p.add_argument("--rounds", type=int, default=7, help="rounds of the clean and fault runs (>= 7)")
    p.add_argument("--attack-rounds", type=int, default=3)
    p.add_argument("--round-timeout", type=int, default=45)
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--robust", default="multikrum", help="the robust strategy compared with FedAvg")
    p.add_argument("--robust-params", default='{"num_byzantine": 0, "num_selected": 2}',
                   help="its STRATEGY_PARAMS (JSON); the default keeps the 2 of 3 updates closest to the others")
    p.add_argument("--keep", action="store_true", help="leave the last stack up")
    p.add_argument("--clean-accuracy", type=float, default=None,
                   help="the clean reference's test accuracy, when the clean scenario is not run again")
    a = p.parse_args(argv)
    scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    workdir = a.workdir or a.out / "work"
    stack = LiveStack(project=a.project, metrics_port=a.metrics_port, aggregator_port=a.aggregator_port,
                      workdir=workdir, tag=a.tag, tls=a.tls == "on",
                      log=lambda m: print(f"{time.strftime('%H:%M:%S')} {m}", flush=True))
    outcomes: list[Outcome] = []
    clean_acc = a.clean_accuracy
    t0 = time.monotonic()
    try:
        # faults first (the likeliest to stop the suite), then their clean reference run
        if "faults" in scenarios:
            outcomes += run_faults(stack, a.rounds, a.round_timeout, clean_acc)
        if "quorum" in scenarios:
            outcomes.append(run_quorum(stack, a.round_timeout))
        if "clean" in scenarios:
            clean_acc, _ = run_clean(stack, a.rounds, a.round_timeout)
            for o in outcomes:
                if o.scenario == "faults" and o.accuracy is not None:
                    o.clean_accuracy = clean_acc
            outcomes.insert(0, Outcome("clean", "none (reference run, same configuration)", "finished", "0",
                                       clean_acc, clean_acc, True, {"finished": True}))
        if "attacks" in scenarios:
            outcomes += run_attacks(stack, [x for x in a.attacks.split(",") if x], a.robust, a.attack_rounds,
                                    a.round_timeout, robust_params=a.robust_params)
    except ChaosError as exc:
        outcomes.append(Outcome("error", "suite stopped", str(exc), "n/a", ok=False, checks={"completed": False}))
        print(f"chaos suite stopped: {exc}", file=sys.stderr)
    finally:
        if not a.keep:
            stack.down()
        else:
            stack.stop_follow()
    meta = {"scenarios": scenarios, "rounds": a.rounds, "attack_rounds": a.attack_rounds,
            "round_timeout": a.round_timeout, "robust": a.robust, "minutes": round((time.monotonic() - t0) / 60, 1),
            **{k: v for k, v in FAULT_VARS.items()}}
    write_report(outcomes, a.out, "make chaos " + " ".join(argv or sys.argv[1:]), meta)
    print((a.out / "chaos.md").read_text())
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
