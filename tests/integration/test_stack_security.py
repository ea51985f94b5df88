"""The default stack's security, from the host and from a stranger's container on the compose
network: TLS only (plain HTTP gets no answer), hospitals demand a client certificate from the
private CA and the aggregator's token for that hospital, metrics accepts writes only from enrolled
services, and every refusal is logged. Shares the synthetic run of test_stack.py (one stack)."""

from __future__ import annotations

import json

import docker
import httpx
import pytest

from tests.integration.conftest import METRICS_URL, PROJECT
from tests.integration.test_stack import CLIENTS, ROUNDS, _hospital_url

ROUND = {"round": 1, "global": {"val_accuracy_median": 0.1, "val_accuracy_mean": 0.1, "val_loss": 2.0},
         "hospitals": {}}

#: run inside a container on the compose network that has no credentials (no CA, no certificate,
#: no token); prints one JSON object with what each attempt got
STRANGER = r"""
import json, httpx
out = {}
def attempt(name, method, url, **kw):
    try:
        r = httpx.request(method, url, verify=False, timeout=20, **kw)
        out[name] = r.status_code
    except httpx.HTTPError as exc:
        out[name] = type(exc).__name__
attempt("fit", "POST", "https://hospital-1:8000/fit", content=b"x")
attempt("fit_plain_http", "POST", "http://hospital-1:8000/fit", content=b"x")
attempt("round", "POST", "https://metrics:8090/api/runs/x/rounds", json={})
attempt("round_forged_token", "POST", "https://metrics:8090/api/runs/x/rounds", json={},
        headers={"Authorization": "Bearer " + "A" * 43})
attempt("predict", "POST", "https://aggregator:8080/api/predict", files={"file": ("a.png", b"x")})
attempt("read_runs", "GET", "https://metrics:8090/api/runs")
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def run(stack):
    return stack.up("synthetic", clients=CLIENTS, rounds=ROUNDS, split="iid", local_epochs=2)


def _containers():
    client = docker.from_env()
    cs = client.containers.list(filters={"label": f"com.docker.compose.project={PROJECT}"})
    return client, {c.labels["com.docker.compose.service"]: c for c in cs}


def test_hospital_refuses_callers_without_certificate_or_token(stack, run):
    base = _hospital_url(stack, "hospital-1")
    # trusts the CA but presents no client certificate: refused in the TLS handshake
    with httpx.Client(verify=stack.tls(), timeout=20) as c, pytest.raises(httpx.TransportError):
        c.post(f"{base}/fit", content=b"x", headers={"Authorization": f"Bearer {stack.token('aggregator', 'hospital-1')}"})
    # a valid certificate of the federation (hospital-2's) without a token: 401; with its own token for
    # metrics, or with the aggregator's token for another hospital: 403
    with httpx.Client(verify=stack.tls("hospital-2"), timeout=20) as c:
        r = c.post(f"{base}/fit", content=b"x")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        for tok in (stack.token("hospital-2", "metrics"), stack.token("aggregator", "hospital-2")):
            r = c.post(f"{base}/fit", content=b"x", headers={"Authorization": f"Bearer {tok}"})
            assert r.status_code == 403
        for path in ("/dataset", "/evaluate"):
            r = c.request("GET" if path == "/dataset" else "POST", f"{base}{path}")
            assert r.status_code == 401, path
        assert c.get(f"{base}/health").status_code == 200  # liveness only
    # the aggregator's own credentials get through to the handler (a clear 400 for a non-exchange body)
    with stack.as_service("aggregator", "hospital-1", timeout=20) as c:
        r = c.post(f"{base}/fit", content=b"not safetensors")
        assert r.status_code == 400 and "safetensors" in r.json()["detail"]
    # each refusal is one structured log line
    _, containers = _containers()
    lines = [json.loads(x) for x in containers["hospital-1"].logs().decode().splitlines() if x.startswith("{")]
    refused = [x for x in lines if x.get("event") == "auth_refused" and x.get("path") == "/fit"]
    assert {x["status"] for x in refused} >= {401, 403}
    assert all(x["service"] == "hospital-1" and x["method"] == "POST" and x["client"] for x in refused)
    assert any(x["reason"] == "unknown token" and x["token"].startswith("sha256:") for x in refused)
    tokens = {stack.token("hospital-2", "metrics"), stack.token("aggregator", "hospital-2")}
    assert not any(t in json.dumps(lines) for t in tokens)


def test_metrics_takes_writes_only_from_enrolled_services(stack, run):
    url = f"{METRICS_URL}/api/runs/{run.run_id}/rounds"
    with httpx.Client(verify=stack.tls(), timeout=20) as c:
        assert c.post(url, json=ROUND).status_code == 401
        assert c.post(url, json=ROUND, headers={"Authorization": "Bearer " + "A" * 43}).status_code == 403
        assert c.post(f"{METRICS_URL}/api/runs", json={"id": "forged"}).status_code == 401
        assert c.post(f"{METRICS_URL}/api/resources", json={"samples": []}).status_code == 401
        assert c.patch(f"{METRICS_URL}/api/runs/{run.run_id}", json={"status": "failed"}).status_code == 401
        # reads stay open to the operator (browser, curl with the CA)
        r = c.get(f"{METRICS_URL}/api/runs/{run.run_id}")
        assert r.status_code == 200 and r.json()["status"] == "finished"
    # an enrolled service's token works (validation answers, not auth)
    with stack.as_service("central", "metrics", timeout=20) as c:
        assert c.post(f"{METRICS_URL}/api/runs", json={}).status_code == 422
    _, containers = _containers()
    logs = containers["metrics"].logs().decode()
    assert '"event": "auth_refused"' in logs and f'"path": "/api/runs/{run.run_id}/rounds"' in logs


def test_plain_http_to_tls_ports_gets_no_answer(stack, run):
    for url in (METRICS_URL, _hospital_url(stack, "hospital-2")):
        plain = url.replace("https://", "http://")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{plain}/health", timeout=10)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{METRICS_URL}/health", timeout=10)  # the system CAs do not vouch for the stack


def test_a_stranger_on_the_compose_network_is_refused(run):
    client, containers = _containers()
    network = next(iter(containers["metrics"].attrs["NetworkSettings"]["Networks"]))
    image = containers["metrics"].image.id
    out = client.containers.run(image, ["python3", "-c", STRANGER], network=network, remove=True,
                                user="10001").decode()
    got = json.loads(out.strip().splitlines()[-1])
    assert isinstance(got["fit"], str), got  # no client certificate: the TLS handshake fails
    assert isinstance(got["fit_plain_http"], str), got
    assert got["round"] == 401 and got["round_forged_token"] == 403, got
    assert got["predict"] == 401, got
    assert got["read_runs"] == 200, got  # reads are open by design (dashboard)
