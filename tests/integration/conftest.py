"""Integration tier: the real Docker Compose stack, started through the README's own command
(`make up ...`), one session-scoped stack fixture. Marked slow; needs Docker and the images
(`make test` prepares both)."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PBC_DIR = ROOT.parent / "shared" / "data" / "pbc-128"
#: overridable so that several developers (or helpers) can run the tier side by side
PROJECT = os.environ.get("HEMAFED_TEST_PROJECT", "hemafedtest")
METRICS_PORT = int(os.environ.get("HEMAFED_TEST_METRICS_PORT", "18090"))
AGGREGATOR_PORT = int(os.environ.get("HEMAFED_TEST_AGGREGATOR_PORT", "18080"))
#: the test stack's private CA and enrolment (`make certs`), one folder per project
CERTS_DIR = Path(os.environ.get("HEMAFED_TEST_CERTS_DIR", ROOT / "build" / "test-certs" / PROJECT))
METRICS_URL = f"https://127.0.0.1:{METRICS_PORT}"
AGGREGATOR_URL = f"https://127.0.0.1:{AGGREGATOR_PORT}"


from .browser import browser  # noqa: E402,F401 - the `browser` fixture (headless Chromium) for page tests


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the item (rep_call ...) so fixtures can save artifacts on failure."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.slow)


@dataclass
class RunInfo:
    run_id: str
    clients: int
    output: str
    seconds: float
    data_mounts: Path
    results_dir: Path


class Stack:
    """Runs `make up` with test ports and directories; caches each named run."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.runs: dict[str, RunInfo] = {}
        self.env = {
            **os.environ,
            "COMPOSE_PROJECT_NAME": PROJECT,
            "METRICS_PORT": str(METRICS_PORT),
            "AGGREGATOR_PORT": str(AGGREGATOR_PORT),
            "CERTS_DIR": str(CERTS_DIR),
        }

    def up(self, name: str, *, clients: int, timeout: float = 1800, **options: str | int) -> RunInfo:
        if name in self.runs:
            return self.runs[name]
        data_mounts = self.workdir / f"data-{name}"
        results_dir = self.workdir / "results"
        run_id = f"test-{name}-{int(time.time())}"
        args = ["make", "--no-print-directory", "up", f"RUN_ID={run_id}", f"CLIENTS={clients}",
                f"DATA_MOUNTS={data_mounts}", f"RESULTS_DIR={results_dir}"]
        args += [f"{k.upper()}={v}" for k, v in options.items()]
        t0 = time.monotonic()
        proc = subprocess.run(args, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        out = proc.stdout + proc.stderr
        if proc.returncode != 0:
            logs = self.compose("logs", "--tail", "60", check=False)
            pytest.fail(f"`{' '.join(args)}` exited {proc.returncode}:\n{out[-6000:]}\n--- logs ---\n{logs[-8000:]}")
        info = RunInfo(run_id, clients, out, time.monotonic() - t0, data_mounts, results_dir)
        self.runs[name] = info
        return info

    def compose(self, *args: str, check: bool = True) -> str:
        cmd = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
        proc = subprocess.run([*cmd, "--profile", "h10", *args], cwd=ROOT, env=self.env | _make_env(),
                              capture_output=True, text=True, timeout=300)
        if check and proc.returncode != 0:
            raise RuntimeError(proc.stdout + proc.stderr)
        return proc.stdout + proc.stderr

    def api(self, path: str) -> httpx.Response:
        """A read from the metrics API (open to anyone who trusts the private CA)."""
        return httpx.get(f"{METRICS_URL}{path}", verify=self.tls(), timeout=30)

    def tls(self, identity: str | None = None) -> ssl.SSLContext:
        """Trusts the stack's CA; with ``identity`` (e.g. "aggregator") also presents that service's certificate."""
        ctx = ssl.create_default_context(cafile=str(CERTS_DIR / "ca.pem"))
        if identity is not None:
            ctx.load_cert_chain(str(CERTS_DIR / identity / "cert.pem"), str(CERTS_DIR / identity / "key.pem"))
        return ctx

    def token(self, caller: str, server: str) -> str:
        """The enrolment token ``caller`` presents to ``server`` (build by `make certs`)."""
        return json.loads((CERTS_DIR / caller / "credentials.json").read_text())[server]

    def as_service(self, caller: str, server: str, **kwargs) -> httpx.Client:
        """A client that calls ``server`` the way ``caller`` does: its certificate and its token."""
        return httpx.Client(verify=self.tls(caller), headers={"Authorization": f"Bearer {self.token(caller, server)}"},
                            **kwargs)

    def down(self) -> None:
        subprocess.run(["make", "--no-print-directory", "down"], cwd=ROOT, env=self.env, capture_output=True,
                       timeout=300)


def _make_env() -> dict[str, str]:
    """Values the compose file requires (${VAR:?}) for commands outside `make up`."""
    keys = ("TF_THREADS SEED HEMAFED_TAG HEMAFED_BASE_IMAGE HOST_UID HOST_GID HOSPITALS RUN_ID ROUNDS STRATEGY "
            "STRATEGY_PARAMS MIN_CLIENTS FRACTION_FIT ROUND_TIMEOUT MODEL IMAGE_SIZE LOCAL_EPOCHS BATCH_SIZE "
            "LEARNING_RATE OPTIMIZER AUGMENT SPLIT DATASET_LABEL DATA_MOUNTS RESULTS_DIR CLASS_WEIGHTING LOCAL_NORM "
            "MAX_STEPS_PER_EPOCH SCHEDULE RECYCLE_FRACTION PARTICIPATION DEPARTED DP_CLIP_NORM DP_NOISE_MULTIPLIER "
            "DP_DELTA CLASSIFIER_ROUNDS CLASSIFIER_LEARNING_RATE CLASSIFIER_EPOCHS FREEZE_CLASSIFIER SWA_ROUNDS LOCAL_BASELINE EPOCHS BEST_BY VAL_SPLIT WAIT_FOR_CLIENTS ROUND_RETRIES ATTACK ATTACKER ATTACK_SCALE "
            "ATTACK_NOISE_STD").split()
    env = {k: "x" for k in keys}
    env.update(CERTS_DIR=str(CERTS_DIR), HEMAFED_SCHEME="https", INSECURE="false")
    env.update(METRICS_PORT=str(METRICS_PORT), AGGREGATOR_PORT=str(AGGREGATOR_PORT), STRATEGY_PARAMS="{}",
               DATA_MOUNTS="/nonexistent", RESULTS_DIR="/nonexistent")
    return env


def docker_available() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    if not docker_available():
        pytest.skip("no Docker engine: run `make test` (it installs and starts Docker) for the integration tier")
    s = Stack(tmp_path_factory.mktemp("stack"))
    yield s
    s.down()
