"""Security layer (hemafed.security, scripts/certs.py): enrolment material, 401/403 on every
protected route of every service (logged), token handling, config paths, and real TLS on loopback
(mutual TLS, host-name verification, plain HTTP refused)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import ssl
import stat
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import ValidationError

from hemafed import security
from hemafed.exchange import ExchangeError, check_weights, spec_of
from hemafed.logs import JsonFormatter
from hemafed_aggregator.app import create_app as aggregator_app
from hemafed_aggregator.settings import AggregatorSettings, RunConfig
from hemafed_hospital.agent import AgentError
from hemafed_hospital.app import create_app as hospital_app
from hemafed_hospital.settings import HospitalSettings
from hemafed_metrics.app import create_app as metrics_app
from hemafed_metrics.settings import MetricsSettings
from hemafed_metrics.store import InMemoryStore
from hemafed_hospital.deps import CallerDep
from tests.unit.security_helpers import all_routes, bearer, certs_script, concrete, make_certs, token

DOC_PATHS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    return make_certs(tmp_path_factory.mktemp("certs"), hospitals=2)


# --------------------------------------------------------------------------- make certs


def _openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True).stdout


def test_certs_ca_verifies_every_service_cert_with_its_own_sans(folders):
    out = folders["metrics"].parent
    assert set(folders) == {"metrics", "aggregator", "central", "hospital-1", "hospital-2"}
    for name, d in folders.items():
        assert sorted(p.name for p in d.iterdir()) == ["ca.pem", "cert.pem", "credentials.json", "enrolment.json",
                                                       "key.pem"]
        assert (d / "ca.pem").read_text() == (out / "ca.pem").read_text()
        assert _openssl("verify", "-CAfile", str(out / "ca.pem"), str(d / "cert.pem")).strip().endswith(": OK")
        text = _openssl("x509", "-in", str(d / "cert.pem"), "-noout", "-ext", "subjectAltName,extendedKeyUsage")
        assert f"DNS:{name}, DNS:localhost, IP Address:127.0.0.1" in text
        assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
        assert f"CN = {name}" in _openssl("x509", "-in", str(d / "cert.pem"), "-noout", "-subject")
        # the key is this certificate's own (same public key)
        assert _openssl("pkey", "-in", str(d / "key.pem"), "-pubout") == \
            _openssl("x509", "-in", str(d / "cert.pem"), "-noout", "-pubkey")
    # the CA key stays on the host, in a private folder; the output folder is private too
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "ca").stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "ca" / "ca.key").stat().st_mode) == 0o600
    assert not any(p.name == "ca.key" for d in folders.values() for p in d.iterdir())
    # a service's certificate is not a CA: it cannot sign another "hospital-1"
    assert "CA:FALSE" in _openssl("x509", "-in", str(folders["hospital-1"] / "cert.pem"), "-noout", "-ext",
                                  "basicConstraints")


def test_certs_pair_every_caller_with_its_own_token(folders):
    enrolled = {n: json.loads((d / "enrolment.json").read_text()) for n, d in folders.items()}
    creds = {n: json.loads((d / "credentials.json").read_text()) for n, d in folders.items()}
    assert set(enrolled["metrics"]) == {"aggregator", "central", "hospital-1", "hospital-2"}
    assert set(enrolled["hospital-1"]) == {"aggregator"} and set(enrolled["hospital-2"]) == {"aggregator"}
    assert set(enrolled["aggregator"]) == {"metrics"}
    assert enrolled["central"] == {}
    assert set(creds["aggregator"]) == {"metrics", "hospital-1", "hospital-2"}
    assert set(creds["hospital-1"]) == {"metrics"} and set(creds["metrics"]) == {"aggregator"}
    # servers keep hashes, never tokens; every (caller, server) pair has a different token
    for server, table in enrolled.items():
        for caller, digest in table.items():
            assert digest == security.hash_token(creds[caller][server])
            assert creds[caller][server] not in (folders[server] / "enrolment.json").read_text()
    all_tokens = [t for c in creds.values() for t in c.values()]
    assert len(set(all_tokens)) == len(all_tokens) == 7
    # what the aggregator presents to hospital-1 is worthless at hospital-2
    h2 = security.Enrolment(enrolled["hospital-2"])
    assert h2.identify(creds["aggregator"]["hospital-1"]) is None
    assert h2.identify(creds["aggregator"]["hospital-2"]) == "aggregator"


def test_certs_are_idempotent_and_grow_with_the_hospitals(tmp_path):
    first = make_certs(tmp_path / "c", hospitals=1)
    ca, cert, tok = ((tmp_path / "c" / "ca.pem").read_text(), (first["hospital-1"] / "cert.pem").read_text(),
                     token(first, "aggregator", "hospital-1"))
    again = make_certs(tmp_path / "c", hospitals=3)
    assert (tmp_path / "c" / "ca.pem").read_text() == ca
    assert (again["hospital-1"] / "cert.pem").read_text() == cert
    assert token(again, "aggregator", "hospital-1") == tok
    assert set(again) == {"metrics", "aggregator", "central", "hospital-1", "hospital-2", "hospital-3"}
    assert security.ServiceSecrets.load(again["hospital-3"]).enrolment.identify(
        token(again, "aggregator", "hospital-3")) == "aggregator"
    # a certificate signed by another CA is replaced
    other = make_certs(tmp_path / "other", hospitals=1)
    (again["hospital-1"] / "cert.pem").write_text((other["hospital-1"] / "cert.pem").read_text())
    make_certs(tmp_path / "c", hospitals=3)
    assert _openssl("verify", "-CAfile", str(tmp_path / "c" / "ca.pem"),
                    str(again["hospital-1"] / "cert.pem")).strip().endswith(": OK")


def test_rotating_a_service_replaces_its_tokens_key_and_certificate_only(tmp_path, capsys):
    out = tmp_path / "c"
    before = make_certs(out, hospitals=2)
    tokens_before = json.loads((out / "ca" / "tokens.json").read_text())
    certs_before = {n: (d / "cert.pem").read_text() for n, d in before.items()}
    old_h2 = token(before, "aggregator", "hospital-2")
    assert certs_script.main(["--out", str(out), "--hospitals", "2", "--rotate", "hospital-2"]) == 0
    assert "rotated hospital-2" in capsys.readouterr().out
    tokens_after = json.loads((out / "ca" / "tokens.json").read_text())
    changed = {k for k in tokens_before if tokens_before[k] != tokens_after[k]}
    assert changed == {"aggregator>hospital-2", "hospital-2>metrics"}  # every pair it is in, no other
    assert {n for n in certs_before if (before[n] / "cert.pem").read_text() != certs_before[n]} == {"hospital-2"}
    assert _openssl("verify", "-CAfile", str(out / "ca.pem"),
                    str(before["hospital-2"] / "cert.pem")).strip().endswith(": OK")
    # the hospital no longer accepts the old token; the aggregator now presents the new one
    h2 = security.ServiceSecrets.load(before["hospital-2"]).enrolment
    assert h2.identify(old_h2) is None
    assert h2.identify(token(before, "aggregator", "hospital-2")) == "aggregator"
    metrics = security.ServiceSecrets.load(before["metrics"]).enrolment
    assert metrics.identify(token(before, "hospital-2", "metrics")) == "hospital-2"
    assert metrics.identify(tokens_before["hospital-2>metrics"]) is None
    assert metrics.identify(token(before, "hospital-1", "metrics")) == "hospital-1"  # untouched
    with pytest.raises(SystemExit, match="cannot rotate hospital-9"):
        certs_script.main(["--out", str(out), "--hospitals", "2", "--rotate", "hospital-9"])


def test_certs_cli(tmp_path, capsys):
    assert certs_script.main(["--out", str(tmp_path / "x"), "--hospitals", "1"]) == 0
    assert "certs: CA" in capsys.readouterr().out
    assert (tmp_path / "x" / "hospital-1" / "key.pem").is_file()
    with pytest.raises(SystemExit):
        certs_script.generate(tmp_path / "y", 0)


# --------------------------------------------------------------------------- tokens and secrets


def test_enrolment_identifies_only_enrolled_tokens():
    e = security.Enrolment.from_tokens({"aggregator": "A" * 43, "central": "c" * 43})
    assert e.callers == ["aggregator", "central"]
    assert e.identify("A" * 43) == "aggregator" and e.identify("c" * 43) == "central"
    for bad in ("A" * 42, "", "A" * 43 + " ", "a" * 43, "x" * 300, "ünïcode" * 5, "A" * 20 + "\n" + "A" * 22):
        assert e.identify(bad) is None
    assert security.fingerprint("A" * 43).startswith("sha256:") and "A" * 10 not in security.fingerprint("A" * 43)
    with pytest.raises(security.SecurityConfigError, match="sha256"):
        security.Enrolment({"aggregator": "not-a-digest"})
    with pytest.raises(security.SecurityConfigError, match="not a valid name"):
        security.Enrolment({"../x": "0" * 64})


def test_secrets_folder_is_checked_at_start_up(folders, tmp_path):
    s = security.ServiceSecrets.load(folders["aggregator"])
    assert set(s.credentials) == {"metrics", "hospital-1", "hospital-2"}
    assert s.enrolment.callers == ["metrics"]
    with pytest.raises(security.SecurityConfigError, match="does not exist"):
        security.ServiceSecrets.load(tmp_path / "absent")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in folders["hospital-1"].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "key.pem").unlink()
    with pytest.raises(security.SecurityConfigError, match="lacks key.pem"):
        security.ServiceSecrets.load(broken)
    (broken / "key.pem").write_bytes((folders["hospital-1"] / "key.pem").read_bytes())
    (broken / "credentials.json").write_text("[1, 2]")
    with pytest.raises(security.SecurityConfigError, match="JSON object"):
        security.ServiceSecrets.load(broken)
    (broken / "credentials.json").write_text('{"metrics": "short"}')
    with pytest.raises(security.SecurityConfigError, match="malformed"):
        security.ServiceSecrets.load(broken)


def test_client_options_send_each_server_its_own_token_over_https_only(folders):
    settings = AggregatorSettings(secrets_dir=folders["aggregator"],
                                  hospitals="hospital-1=https://hospital-1:8000,hospital-2=https://hospital-2:8000")
    opts = security.client_options(settings, {**settings.hospitals, "metrics": "https://metrics:8090"})
    assert isinstance(opts["verify"], ssl.SSLContext) and opts["verify"].verify_mode == ssl.CERT_REQUIRED
    assert opts["verify"].check_hostname
    auth = opts["auth"]
    for host, server in (("hospital-1", "hospital-1"), ("hospital-2", "hospital-2"), ("metrics", "metrics")):
        req = next(auth.auth_flow(httpx.Request("POST", f"https://{host}:8000/fit")))
        assert req.headers["Authorization"] == f"Bearer {token(folders, 'aggregator', server)}"
    stray = next(auth.auth_flow(httpx.Request("GET", "https://example.org/")))
    assert "Authorization" not in stray.headers
    with pytest.raises(security.SecurityConfigError, match="https"):
        security.client_options(settings, {"hospital-1": "http://hospital-1:8000"})
    # without secrets (in-process tests) or with INSECURE=true: plain clients
    assert security.client_options(AggregatorSettings(), {"metrics": "http://metrics:8090"}) == {}
    assert security.client_options(AggregatorSettings(secrets_dir=folders["aggregator"], insecure=True),
                                   {"metrics": "http://metrics:8090"}) == {}


# --------------------------------------------------------------------------- config paths and names


def test_config_paths_and_names_cannot_escape(tmp_path):
    for bad in ("/data/../etc", "../data", "/data/x/../../etc", "/da\x00ta"):
        with pytest.raises(ValidationError):
            HospitalSettings(hospital_id="hospital-1", data_dir=bad)
        with pytest.raises(ValidationError):
            AggregatorSettings(output_dir=bad)
        with pytest.raises(ValidationError):
            MetricsSettings(db_path=bad)
    with pytest.raises(ValidationError):
        AggregatorSettings(test_dir="/data/../../x")
    with pytest.raises(ValidationError):
        HospitalSettings(hospital_id="h", data_dir="/data", secrets_dir="/run/../etc")
    for bad_id in ("..", ".", ".hidden", "a/b", "-x", "", "x" * 65, "h 1"):
        with pytest.raises(ValidationError):
            HospitalSettings(hospital_id=bad_id)
        with pytest.raises(ValidationError):
            RunConfig(run_id=bad_id)
    with pytest.raises(ValidationError, match="not a valid name"):
        AggregatorSettings(hospitals="../h=https://h:8000")
    assert HospitalSettings(hospital_id="hospital-1", data_dir="/data/./x").data_dir == Path("/data/x")
    assert MetricsSettings(db_path=":memory:").db_path == Path(":memory:")
    assert RunConfig(run_id="run-2024.01_a").run_id == "run-2024.01_a"
    # a relative path below a root stays there; a symlink or ".." out of it is refused
    (tmp_path / "root" / "a").mkdir(parents=True)
    (tmp_path / "root" / "out").symlink_to(tmp_path)
    assert security.confined(tmp_path / "root", "a") == (tmp_path / "root" / "a").resolve()
    for bad in ("../x", "out/secret", "/etc/passwd"):
        with pytest.raises(ValueError, match="escapes"):
            security.confined(tmp_path / "root", bad)


def test_image_scan_skips_symlinks_out_of_the_mount(tmp_path):
    from hemafed.data.imagefiles import scan_image_folder
    from tests.unit.helpers import synthetic_folder

    outside = synthetic_folder(tmp_path / "other-hospital", n_per_class=1, size=16)
    root = synthetic_folder(tmp_path / "mine", n_per_class=1, size=16)
    cls = sorted(p.name for p in root.iterdir())[0]
    stolen = next((outside / cls).iterdir())
    # a link that stays inside the mount is fine
    (root / cls / "link.png").symlink_to(stolen)
    (root / "borrowed").symlink_to(outside / cls, target_is_directory=True)
    (root / cls / "alias.png").symlink_to(next(p for p in (root / cls).iterdir() if not p.is_symlink()))
    scan = scan_image_folder(root)
    reasons = dict(scan.skipped)
    assert reasons[f"{cls}/link.png"] == "outside_root" and reasons["borrowed"] == "outside_root"
    assert "borrowed" not in {c for _, c in scan.files}
    assert all(tmp_path / "other-hospital" not in p.resolve().parents for p, _ in scan.files)
    assert any(p.name == "alias.png" for p, _ in scan.files)


def test_update_norm_bound():
    w = [np.ones((3, 3), np.float32), np.zeros(4, np.float32)]
    check_weights(w, spec_of(w), max_norm=3.0)
    with pytest.raises(ExchangeError, match="norm"):
        check_weights([w[0] * 1e3, w[1]], spec_of(w), max_norm=1e3)
    assert RunConfig().max_update_norm == 1e6
    with pytest.raises(ValidationError):
        RunConfig(max_update_norm=0)


# --------------------------------------------------------------------------- 401 / 403 on every route


class _ReachedAgent:
    """Stands in for the hospital agent where only authentication is under test: every handler
    answers 409 "reached", so an accepted request is told apart from a refused one without
    training anything (or importing TensorFlow)."""

    def __getattr__(self, name):
        def handler(*args, **kwargs):
            raise AgentError(409, f"reached {name}")

        return handler


def _apps(folders, tmp_path):
    """(app, server name, its open routes, a caller enrolled there) for every service."""
    hospital = hospital_app(HospitalSettings(hospital_id="hospital-1", data_dir=tmp_path / "absent",
                                             secrets_dir=folders["hospital-1"]),
                            agent=_ReachedAgent(), report_resources=False)
    metrics = metrics_app(MetricsSettings(db_path=":memory:", sample_interval=0, secrets_dir=folders["metrics"]),
                          store=InMemoryStore())
    aggregator = aggregator_app(AggregatorSettings(hospitals="hospital-1=https://hospital-1:8000",
                                                   secrets_dir=folders["aggregator"], auto_start=False))
    return [
        (hospital, "hospital-1", lambda m, p: p == "/health", "aggregator"),
        # metrics: reads (dashboard, CSV, Prometheus) and the browser's prediction upload stay open
        (metrics, "metrics", lambda m, p: m in ("GET", "HEAD") or p == "/api/predict", "hospital-2"),
        (aggregator, "aggregator", lambda m, p: m == "GET", "metrics"),
    ]


def _routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, concrete path) of every API route (the docs routes aside)."""
    return [(m, concrete(path)) for path, methods, r in all_routes(app) if isinstance(r, APIRoute)
            for m in sorted(methods)]


@pytest.fixture
def refusals():
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("hemafed.security")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.mark.anyio
async def test_every_protected_route_refuses_unenrolled_callers(folders, tmp_path, refusals):
    protected_seen = 0
    for app, server, is_open, caller in _apps(folders, tmp_path):
        routes = _routes(app)
        assert routes, server
        good = bearer(token(folders, caller, server))
        foreign = bearer(token(folders, "aggregator", "hospital-2"))  # a real token, for another server
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{server}") as c:
            for method, path in routes:
                if is_open(method, path):
                    r = await c.request(method, path)
                    assert r.status_code not in (401, 403), (server, method, path)
                    continue
                protected_seen += 1
                before = len(refusals)
                r = await c.request(method, path)
                assert r.status_code == 401, (server, method, path, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
                assert r.json() == {"detail": "a bearer token issued at enrolment is required"}
                r = await c.request(method, path, headers={"Authorization": "Basic dXNlcjpwdw=="})
                assert r.status_code == 401, (server, method, path)
                for headers in (bearer("x" * 43), foreign):
                    r = await c.request(method, path, headers=headers)
                    assert r.status_code == 403, (server, method, path, r.text)
                    assert r.json() == {"detail": "this token is not enrolled for this service"}
                # the enrolled caller gets past authentication (the handler's own answer: 4xx/5xx for no body)
                r = await c.request(method, path, headers=good)
                assert r.status_code not in (401, 403), (server, method, path, r.text)
                if server == "hospital-1":
                    assert r.status_code == 409 and r.json()["detail"].startswith("reached"), (path, r.text)
                events = refusals[before:]
                assert [e.status for e in events] == [401, 401, 403, 403], (server, method, path)
                for e in events:
                    assert e.event == "auth_refused" and e.path == path and e.method == method
                    assert e.client == "127.0.0.1"
                assert events[0].reason == "missing bearer token" and events[2].reason == "unknown token"
                assert events[3].token == security.fingerprint(token(folders, "aggregator", "hospital-2"))
    # hospital: dataset, fit, evaluate, local-baseline (at least); metrics: 4 writes; aggregator: predict
    assert protected_seen >= 9


def test_hospital_protects_every_route_but_health(folders, tmp_path):
    hospital = _apps(folders, tmp_path)[0][0]
    paths = {p for _, p in _routes(hospital)}
    assert {"/dataset", "/fit", "/evaluate"} <= paths
    assert {p for p, _, _ in all_routes(hospital)} - paths <= DOC_PATHS  # nothing else is served


@pytest.mark.anyio
async def test_refusal_log_line_is_structured_json_without_the_token(folders, tmp_path):
    app = _apps(folders, tmp_path)[0][0]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("hospital-1"))
    logger = logging.getLogger("hemafed.security")
    logger.addHandler(handler)
    secret = token(folders, "aggregator", "hospital-2")
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hospital-1") as c:
            assert (await c.post("/fit", headers=bearer(secret))).status_code == 403
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert {k: line[k] for k in ("level", "service", "event", "status", "reason", "method", "path", "client")} == {
        "level": "warning", "service": "hospital-1", "event": "auth_refused", "status": 403,
        "reason": "unknown token", "method": "POST", "path": "/fit", "client": "127.0.0.1"}
    assert line["token"] == security.fingerprint(secret)
    assert secret not in stream.getvalue()


@pytest.mark.anyio
async def test_a_service_reports_only_its_own_resource_samples(folders, tmp_path, refusals):
    store = InMemoryStore()
    app = metrics_app(MetricsSettings(db_path=":memory:", sample_interval=0, secrets_dir=folders["metrics"]),
                      store=store)

    def batch(*services: str) -> dict:
        return {"samples": [{"service": s, "t": 1.0 + i, "cpu_percent": 5.0, "rss_bytes": 1024}
                            for i, s in enumerate(services)]}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://metrics") as c:
        h2 = bearer(token(folders, "hospital-2", "metrics"))
        r = await c.post("/api/resources", json=batch("hospital-2", "hospital-2"), headers=h2)
        assert r.status_code == 202 and r.json() == {"accepted": 2}
        before = len(refusals)
        # one foreign sample refuses the whole batch: nothing of it is stored
        r = await c.post("/api/resources", json=batch("hospital-2", "aggregator", "hospital-1"), headers=h2)
        assert r.status_code == 403
        assert r.json() == {"detail": "hospital-2 may report only its own records, not those of aggregator, "
                                      "hospital-1"}
        [event] = refusals[before:]
        assert (event.event, event.status, event.caller, event.path) == (
            "auth_refused", 403, "hospital-2", "/api/resources")
        r = await c.post("/api/resources", json=batch("aggregator"),
                         headers=bearer(token(folders, "aggregator", "metrics")))
        assert r.status_code == 202
    assert sorted((x.service, x.t) for x in store.list_resources()) == [("aggregator", 1.0), ("hospital-2", 1.0),
                                                                        ("hospital-2", 2.0)]


def test_openapi_declares_the_bearer_scheme(folders, tmp_path):
    hospital = _apps(folders, tmp_path)[0][0]
    spec = hospital.openapi()
    assert spec["components"]["securitySchemes"]["enrolment token"] == {
        "type": "http", "scheme": "bearer",
        "description": "the caller's token for this service, issued at enrolment (`make certs`)"}
    assert spec["paths"]["/fit"]["post"]["security"] == [{"enrolment token": []}]
    assert "security" not in spec["paths"]["/health"]["get"]


# --------------------------------------------------------------------------- real TLS on loopback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serve(app, port: int, options: dict):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:  # bounded wait for the listener
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _tls_app(settings: HospitalSettings) -> FastAPI:
    """A minimal service wired exactly like the real ones (security.install + require_caller)."""
    app = FastAPI()
    security.install(app, settings)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/fit")
    def fit(caller: CallerDep) -> dict:
        return {"caller": caller}

    return app


def test_mutual_tls_on_loopback(folders):
    settings = HospitalSettings(hospital_id="hospital-1", secrets_dir=folders["hospital-1"])
    port = _free_port()
    agg = security.ServiceSecrets.load(folders["aggregator"])
    good = bearer(token(folders, "aggregator", "hospital-1"))
    with _serve(_tls_app(settings), port, security.server_options(settings, "required")) as url:
        # the aggregator: verifies the hospital (CA + host name), presents its certificate and its token
        with httpx.Client(verify=agg.client_context(), timeout=10) as c:
            r = c.post(f"{url}/fit", headers=good)
            assert r.status_code == 200 and r.json() == {"caller": "aggregator"}
            assert r.extensions["network_stream"].get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
            assert c.post(f"{url}/fit").status_code == 401
            assert c.post(f"{url}/fit", headers=bearer(token(folders, "aggregator", "hospital-2"))).status_code == 403
        # host-name verification (new connections): the certificate is hospital-1's, not hospital-2's
        for name, ok in (("hospital-1", True), ("hospital-2", False)):
            with httpx.Client(verify=agg.client_context(), timeout=10) as c:
                if ok:
                    assert c.get(f"{url}/health", extensions={"sni_hostname": name}).status_code == 200
                else:
                    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                        c.get(f"{url}/health", extensions={"sni_hostname": name})
        # a client that trusts the CA but has no certificate is refused during the TLS handshake
        no_cert = ssl.create_default_context(cafile=str(agg.ca_file))
        with httpx.Client(verify=no_cert, timeout=10) as c, pytest.raises(httpx.TransportError):
            c.post(f"{url}/fit", headers=good)
        # a certificate from another CA is refused too
        rogue_dir = folders["metrics"].parent.parent / "rogue"
        rogue = make_certs(rogue_dir, hospitals=1)["aggregator"]
        ctx = ssl.create_default_context(cafile=str(agg.ca_file))
        ctx.load_cert_chain(str(rogue / "cert.pem"), str(rogue / "key.pem"))
        with httpx.Client(verify=ctx, timeout=10) as c, pytest.raises(httpx.TransportError):
            c.post(f"{url}/fit", headers=good)
        # a client that does not know the private CA does not trust the server
        with httpx.Client(timeout=10) as c, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            c.get(f"{url}/health")
        # plain HTTP to the TLS port gets no answer
        with httpx.Client(timeout=10) as c, pytest.raises(httpx.TransportError):
            c.get(url.replace("https://", "http://") + "/health")
        # the container health check (its own certificate as client certificate)
        assert security.check_health(settings, port) == 0
    assert security.check_health(settings, port) == 1  # stopped


def test_optional_client_certs_serve_the_operators_reads(folders):
    settings = MetricsSettings(db_path=":memory:", sample_interval=0, secrets_dir=folders["metrics"])
    port = _free_port()
    app = _tls_app(HospitalSettings(hospital_id="metrics", secrets_dir=folders["metrics"]))
    with _serve(app, port, security.server_options(settings, "optional")) as url:
        ca_only = ssl.create_default_context(cafile=str(folders["metrics"] / "ca.pem"))
        with httpx.Client(verify=ca_only, timeout=10) as c:
            assert c.get(f"{url}/health").status_code == 200  # a browser / curl with the CA
            assert c.post(f"{url}/fit").status_code == 401  # but no writes without a token
            r = c.post(f"{url}/fit", headers=bearer(token(folders, "hospital-1", "metrics")))
            assert r.status_code == 200 and r.json() == {"caller": "hospital-1"}


def test_entry_point_is_fail_closed(folders, tmp_path, capsys, monkeypatch):
    built = []

    def factory(settings):
        built.append(settings)
        return FastAPI()

    monkeypatch.delenv("SECRETS_DIR", raising=False)
    monkeypatch.delenv("INSECURE", raising=False)
    rc = security.run_service(lambda: HospitalSettings(hospital_id="hospital-1"), factory, port=1,
                              client_certs="required", argv=[])
    assert rc == 2 and built == []
    assert "refusing to start: SECRETS_DIR is not set" in capsys.readouterr().err
    rc = security.run_service(lambda: HospitalSettings(hospital_id="hospital-1", secrets_dir=tmp_path),
                              factory, port=1, client_certs="required", argv=["serve"])
    assert rc == 2 and built == [] and "lacks ca.pem" in capsys.readouterr().err
    rc = security.run_service(lambda: HospitalSettings(hospital_id="../x"), factory, port=1,
                              client_certs="required", argv=[])
    assert rc == 2 and "invalid configuration" in capsys.readouterr().err
    # with secrets the TLS options are complete; INSECURE=true is the only way to plain HTTP
    s = HospitalSettings(hospital_id="hospital-1", secrets_dir=folders["hospital-1"])
    opts = security.server_options(s, "required")
    assert opts["ssl_cert_reqs"] == ssl.CERT_REQUIRED and opts["ssl_certfile"].endswith("hospital-1/cert.pem")
    assert security.server_options(MetricsSettings(secrets_dir=folders["metrics"]), "optional")["ssl_cert_reqs"] \
        == ssl.CERT_OPTIONAL
    assert security.server_options(HospitalSettings(hospital_id="h", insecure=True), "required") == {}
    # the containers' health check (standard library only): usage, and a port where nothing listens
    from hemafed import healthcheck

    assert healthcheck.main([]) == 2
    assert healthcheck.main([f"https://127.0.0.1:{_free_port()}/health"]) == 1  # https needs the secrets folder
    assert healthcheck.main([f"https://127.0.0.1:{_free_port()}/health", str(folders["hospital-1"])]) == 1
    assert security.run_service(lambda: s, factory, port=_free_port(), client_certs="required",
                                argv=["healthcheck"]) == 1
