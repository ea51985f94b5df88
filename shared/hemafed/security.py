"""Transport security and service credentials, shared by every HemaFed service (no TensorFlow).

The model (``make certs`` -> ``scripts/certs.py`` writes the material; see README, *Security*):

* **TLS everywhere.** A private CA signs one certificate per service (SAN: its compose DNS name,
  ``localhost``, ``127.0.0.1``). Servers answer HTTPS only; clients verify the server against the
  CA and the host name and present their own certificate. Hospitals *require* a client
  certificate (mutual TLS); the aggregator and the metrics service ask for one but also serve
  clients without one (the operator's browser, ``make status``).
* **Credentials.** Every (caller, server) pair has its own bearer token, issued at enrolment. Each
  service's folder holds ``credentials.json`` (``{server: token}``: what it presents when it calls
  that server) and ``enrolment.json`` (``{caller: sha256(token)}``: who may call its protected
  routes). A hospital's enrolment lists only the aggregator, with a token that is valid for that
  hospital alone, so a compromised hospital learns nothing it could replay elsewhere. Tokens are
  compared in constant time; no server stores a token, only its hash.
* **Protected routes** depend on :func:`require_caller` (each service names it in its ``deps.py``):
  401 without a bearer token, 403 with an unknown one; every refusal is logged as one JSON line
  (``reason``, ``path``, ``method``, ``client``, a token fingerprint, never the token).

One folder per service (``SECRETS_DIR``, mounted read-only by compose) holds everything it needs::

    ca.pem  cert.pem  key.pem  credentials.json  enrolment.json

Each service's ``Settings`` derives from :class:`ServiceSettings`. The process entry point
(:func:`run_service`, i.e. ``python -m hemafed_<service>``) is fail-closed: it refuses to serve
without the secrets folder unless ``INSECURE=true`` (plain HTTP, no credentials: the explicit
escape hatch for local debugging, ``make up TLS=off``). An app built in process without a secrets
folder (the unit tests' ASGI transports) does not check credentials.

Outgoing calls: :func:`async_client` / :func:`sync_client` build an ``httpx`` client that verifies
servers with the CA, presents this service's certificate and adds the right bearer token per
destination host (:class:`BearerAuth`). Other services' clients (e.g. the metrics service's proxy
to the aggregator) should be built with them too.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import re
import ssl
import sys
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import httpx
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BeforeValidator, ValidationError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

log = logging.getLogger("hemafed.security")

CA_FILE = "ca.pem"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
CREDENTIALS_FILE = "credentials.json"
ENROLMENT_FILE = "enrolment.json"

#: service, hospital and run names that may become a path component or a DNS name: no "." / ".."
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
#: tokens are URL-safe base64 (``secrets.token_urlsafe``); anything else is refused before hashing
_TOKEN = re.compile(r"^[A-Za-z0-9_\-]{16,256}$")

ClientCerts = Literal["required", "optional"]


class SecurityConfigError(ValueError):
    """The secrets folder or a security setting is unusable (raised at start-up, never per request)."""


# --------------------------------------------------------------------------- names and paths


def check_name(value: str) -> str:
    """``value`` if it is a safe service / hospital / run name (see :data:`NAME_PATTERN`)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid name (letters, digits, '_', '.', '-'; not starting with "
                         "'.' or '-'; at most 64 characters)")
    return value


def check_config_path(path: Path) -> Path:
    """A configured path may not climb out of where it points: no ``..`` component, no NUL byte."""
    text = str(path)
    if "\x00" in text:
        raise ValueError("path contains a NUL byte")
    if ".." in PurePath(text).parts:
        raise ValueError(f"path {text!r} must not contain '..'")
    return path


def confined(root: Path, relative: str | PurePath) -> Path:
    """``root / relative`` resolved, or :class:`ValueError` when it (or a symlink on the way) leaves ``root``."""
    base = Path(root).resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise ValueError(f"{relative!s} escapes {root}")
    return target


def split_commas(v: Any) -> Any:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (lists pass through)."""
    if isinstance(v, str):
        return [c.strip() for c in v.split(",") if c.strip()]
    return v


SafeName = Annotated[str, AfterValidator(check_name)]
ConfigPath = Annotated[Path, AfterValidator(check_config_path)]
#: a settings field given as one comma-separated environment variable (e.g. CLASSES)
CommaList = Annotated[list[str], NoDecode, BeforeValidator(split_commas)]


# --------------------------------------------------------------------------- settings


class ServiceSettings(BaseSettings):
    """The security fields of every service's one ``Settings`` class (which derives from this)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    #: this service's folder from ``make certs`` (CA, its certificate and key, credentials, enrolment)
    secrets_dir: ConfigPath | None = None
    #: the explicit escape hatch for local debugging: plain HTTP and no credentials
    insecure: bool = False

    def load_secrets(self) -> ServiceSecrets | None:
        """The secrets folder's content; ``None`` when insecure or when no folder is configured."""
        if self.insecure or self.secrets_dir is None:
            return None
        return ServiceSecrets.load(self.secrets_dir)


# --------------------------------------------------------------------------- tokens and enrolment


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def fingerprint(token: str) -> str:
    """A short, non-reversible label of a token for logs."""
    return "sha256:" + hash_token(token)[:12]


class Enrolment:
    """Who may call this service's protected routes: caller name -> sha256 of its token."""

    def __init__(self, hashes: Mapping[str, str]) -> None:
        for name, digest in hashes.items():
            try:
                check_name(name)
            except ValueError as exc:
                raise SecurityConfigError(f"enrolment: {exc}") from None
            if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
                raise SecurityConfigError(f"enrolment: {name!r} needs a lower-case sha256 hex digest")
        self._hashes = dict(hashes)

    @classmethod
    def from_tokens(cls, tokens: Mapping[str, str]) -> Enrolment:
        """From plain tokens (tests and the certificate tool)."""
        return cls({name: hash_token(tok) for name, tok in tokens.items()})

    @property
    def callers(self) -> list[str]:
        return sorted(self._hashes)

    def identify(self, token: str) -> str | None:
        """The caller whose token this is, else ``None``. Every entry is compared in constant time."""
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            return None
        digest = hash_token(token)
        found = None
        for name, ref in self._hashes.items():
            if hmac.compare_digest(digest, ref):
                found = name
        return found


@dataclass(frozen=True)
class ServiceSecrets:
    """The content of one service's secrets folder."""

    directory: Path
    credentials: dict[str, str] = field(default_factory=dict)
    enrolment: Enrolment = field(default_factory=lambda: Enrolment({}))

    @classmethod
    def load(cls, directory: str | Path) -> ServiceSecrets:
        d = Path(directory)
        if not d.is_dir():
            raise SecurityConfigError(f"secrets folder {d} does not exist (run `make certs`)")
        for name in (CA_FILE, CERT_FILE, KEY_FILE, CREDENTIALS_FILE, ENROLMENT_FILE):
            if not (d / name).is_file():
                raise SecurityConfigError(f"secrets folder {d} lacks {name} (run `make certs`)")
        creds = _read_json_object(d / CREDENTIALS_FILE)
        for target, token in creds.items():
            if not isinstance(token, str) or not _TOKEN.fullmatch(token):
                raise SecurityConfigError(f"{CREDENTIALS_FILE}: the token for {target!r} is malformed")
        return cls(directory=d, credentials=creds, enrolment=Enrolment(_read_json_object(d / ENROLMENT_FILE)))

    @property
    def ca_file(self) -> Path:
        return self.directory / CA_FILE

    @property
    def cert_file(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def key_file(self) -> Path:
        return self.directory / KEY_FILE

    def client_context(self) -> ssl.SSLContext:
        """Verifies servers against the private CA (and their host name) and presents our certificate."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        return ctx

    def server_options(self, client_certs: ClientCerts) -> dict[str, Any]:
        """uvicorn's TLS keyword arguments."""
        return {
            "ssl_certfile": str(self.cert_file),
            "ssl_keyfile": str(self.key_file),
            "ssl_ca_certs": str(self.ca_file),
            "ssl_cert_reqs": ssl.CERT_REQUIRED if client_certs == "required" else ssl.CERT_OPTIONAL,
        }


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SecurityConfigError(f"{path}: {exc}") from exc
    if not isinstance(value, dict):
        raise SecurityConfigError(f"{path} must hold a JSON object")
    return value


# --------------------------------------------------------------------------- incoming: FastAPI


def install(app: Any, settings: ServiceSettings) -> ServiceSecrets | None:
    """Load the settings' secrets onto ``app.state`` (``secrets``, ``enrolment``); call from ``create_app``."""
    secrets = settings.load_secrets()
    app.state.secrets = secrets
    app.state.enrolment = secrets.enrolment if secrets is not None else None
    return secrets


_bearer = HTTPBearer(auto_error=False, scheme_name="enrolment token",
                     description="the caller's token for this service, issued at enrolment (`make certs`)")


def require_caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """The enrolled caller's name; 401 without a bearer token, 403 with an unknown one (both logged).

    Without an enrolment on ``app.state`` (an app built in process without secrets) every caller
    is accepted as ``"anonymous"``; the service entry point never serves that way."""
    enrolment: Enrolment | None = getattr(request.app.state, "enrolment", None)
    if enrolment is None:
        return "anonymous"
    if credentials is None or not credentials.credentials:
        _refuse(request, 401, "missing bearer token")
    caller = enrolment.identify(credentials.credentials)
    if caller is None:
        _refuse(request, 403, "unknown token", token=fingerprint(credentials.credentials))
    request.state.caller = caller
    return caller


def require_caller_for_writes(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str | None:
    """Reads (GET, HEAD, OPTIONS) stay open; every other method needs an enrolled caller."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return None
    return require_caller(request, credentials)


def refuse_foreign_subject(request: Request, caller: str, subjects: list[str]) -> None:
    """403 (logged like an authentication refusal) for an enrolled caller writing records of
    another service: a hospital may report only its own resource samples."""
    client = request.client.host if request.client else "unknown"
    log.warning("request refused: %s wrote records of %s", caller, ", ".join(subjects), extra={
        "event": "auth_refused", "status": 403, "reason": "records of another service", "caller": caller,
        "method": request.method, "path": request.url.path, "client": client,
    })
    raise HTTPException(403, f"{caller} may report only its own records, not those of {', '.join(subjects)}")


def _refuse(request: Request, status: int, reason: str, **extra: str) -> None:
    client = request.client.host if request.client else "unknown"
    log.warning("request refused: %s", reason, extra={
        "event": "auth_refused", "status": status, "reason": reason, "method": request.method,
        "path": request.url.path, "client": client, **extra,
    })
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    detail = ("a bearer token issued at enrolment is required" if status == 401
              else "this token is not enrolled for this service")
    raise HTTPException(status, detail, headers=headers)


# --------------------------------------------------------------------------- outgoing: httpx


class BearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer <token>`` for the request's host (and nothing for other hosts)."""

    def __init__(self, tokens_by_host: Mapping[str, str]) -> None:
        self.tokens = {h.lower(): t for h, t in tokens_by_host.items()}

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.tokens.get(request.url.host.lower())
        if token is not None:
            request.headers["Authorization"] = f"Bearer {token}"
        yield request


def client_options(settings: ServiceSettings, endpoints: Mapping[str, str | None]) -> dict[str, Any]:
    """``httpx`` client keyword arguments (``verify``, ``auth``) for calling ``endpoints``
    (``{server name: base URL}``); empty when the service runs without secrets.

    With secrets every endpoint must be ``https``: a token never travels in clear text."""
    secrets = settings.load_secrets()
    if secrets is None:
        return {}
    tokens: dict[str, str] = {}
    for name, url in endpoints.items():
        if not url:
            continue
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise SecurityConfigError(f"{name}: {url!r} must be an https:// URL when TLS is on")
        token = secrets.credentials.get(name)
        if token is None:
            log.warning("no credential for %s in %s: its protected routes will refuse us", name, secrets.directory)
        else:
            tokens[parts.hostname] = token
    return {"verify": secrets.client_context(), "auth": BearerAuth(tokens)}


def async_client(settings: ServiceSettings, endpoints: Mapping[str, str | None], **kwargs: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` with this service's TLS and credentials (see :func:`client_options`)."""
    return httpx.AsyncClient(**client_options(settings, endpoints), **kwargs)


def sync_client(settings: ServiceSettings, endpoints: Mapping[str, str | None], **kwargs: Any) -> httpx.Client:
    return httpx.Client(**client_options(settings, endpoints), **kwargs)


# --------------------------------------------------------------------------- process entry point


def check_health(settings: ServiceSettings, port: int, timeout: float = 3.0) -> int:
    """0 when ``/health`` on this container's own port answers 200 (over TLS unless insecure).

    The containers' health check itself is :mod:`hemafed.healthcheck` (standard library only, so
    that it starts fast on a loaded host); this is the same check from settings."""
    from hemafed.healthcheck import check

    scheme = "http" if settings.insecure else "https"
    return check(f"{scheme}://127.0.0.1:{port}/health", settings.secrets_dir, timeout)


def server_options(settings: ServiceSettings, client_certs: ClientCerts) -> dict[str, Any]:
    """uvicorn's TLS options; fail-closed: without secrets only an explicit ``INSECURE=true`` serves."""
    if settings.insecure:
        log.warning("INSECURE=true: serving plain HTTP without credentials (local debugging only)")
        return {}
    if settings.secrets_dir is None:
        raise SecurityConfigError("SECRETS_DIR is not set: run `make certs` and mount the service's folder "
                                  "(or set INSECURE=true for a local debugging session)")
    return ServiceSecrets.load(settings.secrets_dir).server_options(client_certs)


def run_service(
    settings_factory: Callable[[], ServiceSettings],
    app_factory: Callable[[Any], Any],
    *,
    port: int,
    client_certs: ClientCerts,
    argv: list[str] | None = None,
) -> int:
    """``python -m hemafed_<service> [serve|healthcheck] [--host H] [--port P]``."""
    p = argparse.ArgumentParser(description="Serve this HemaFed service, or check its health.")
    p.add_argument("command", nargs="?", default="serve", choices=("serve", "healthcheck"))
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=port)
    a = p.parse_args(argv)
    try:
        settings = settings_factory()
    except ValidationError as exc:
        print(f"invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    if a.command == "healthcheck":
        return check_health(settings, a.port)
    try:
        tls = server_options(settings, client_certs)
        app = app_factory(settings)
    except SecurityConfigError as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", **tls)
    return 0
