"""Enrolment material for the HemaFed stack (``make certs``; ``make up`` runs it when needed).

    python3 scripts/certs.py --out build/certs --hospitals 10

Writes, with the ``openssl`` command line tool and the standard library only:

* ``OUT/ca/ca.key`` + ``OUT/ca.pem``: a private CA (EC P-256, 10 years). The CA key never leaves
  ``OUT/ca/`` (mode 0700) and is mounted into no container.
* ``OUT/ca/tokens.json``: one random bearer token per (caller, server) pair (mode 0600).
* ``OUT/<service>/`` for metrics, aggregator, central and hospital-1..N, each mounted read-only
  into its own container only: ``ca.pem``, ``cert.pem`` + ``key.pem`` (SAN: the compose DNS name,
  ``localhost``, ``127.0.0.1``; server and client use), ``credentials.json`` (the tokens this
  service presents, by server) and ``enrolment.json`` (the sha256 of the tokens of the callers it
  accepts).

Who may call whom: every service reports to metrics; the aggregator calls each hospital with a
token valid for that hospital only; metrics calls the aggregator (the prediction proxy).

Idempotent: an existing CA, keys, certificates (while valid for 30 more days and signed by the
CA) and tokens are kept; new hospitals get theirs; every service's files are rewritten from them.

Rotation (``--rotate hospital-2 [...]``, ``make certs ROTATE=hospital-2``): for a service whose
secrets may have leaked, or a site that leaves, every token it presents or accepts is replaced and
it gets a new key and certificate; the other services' tokens stay. The old tokens stop working
once the services have re-read their enrolment (``make down`` + ``make up``). A rotated name that
is not a service is an error; the old certificate stays valid under the CA until it expires (no
CRL: rotate the CA by deleting ``OUT/ca/`` to revoke every certificate at once).
``OUT`` is mode 0700, so on the host only its owner reads the keys; the files in a service folder
are 0644 so that the container's user can read them through the read-only bind mount.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DAYS_CA = 3650
DAYS_SERVICE = 825
EC_CURVE = "prime256v1"
#: services next to the hospitals (``central`` is the centralised-baseline trainer; it reports to metrics)
CORE_SERVICES = ("metrics", "aggregator", "central")


def services(hospitals: int) -> list[str]:
    return [*CORE_SERVICES, *(f"hospital-{k}" for k in range(1, hospitals + 1))]


def calls(hospitals: int) -> list[tuple[str, str]]:
    """(caller, server) pairs that get a token."""
    pairs = [(s, "metrics") for s in services(hospitals) if s != "metrics"]
    pairs += [("aggregator", f"hospital-{k}") for k in range(1, hospitals + 1)]
    pairs += [("metrics", "aggregator")]
    return pairs


def _openssl(*args: str, cwd: Path | None = None) -> str:
    exe = shutil.which("openssl")
    if exe is None:
        raise SystemExit("certs: the `openssl` command is needed (Debian: apt-get install openssl)")
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()[-600:]}")
    return proc.stdout


def _write(path: Path, text: str, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_ca(out: Path) -> tuple[Path, Path]:
    ca_dir = out / "ca"
    ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(ca_dir, 0o700)
    key, cert = ca_dir / "ca.key", out / "ca.pem"
    if not (key.is_file() and cert.is_file() and _valid_for(cert, days=30)):
        _openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{EC_CURVE}", "-nodes",
                 "-keyout", str(key), "-out", str(cert), "-days", str(DAYS_CA), "-sha256",
                 "-subj", "/O=HemaFed/CN=HemaFed private CA",
                 "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        os.chmod(key, 0o600)
        os.chmod(cert, 0o644)
        for old in out.glob("*/cert.pem"):  # certificates of a previous CA are useless now
            old.unlink()
    return key, cert


def _valid_for(cert: Path, days: int) -> bool:
    try:
        _openssl("x509", "-in", str(cert), "-noout", "-checkend", str(days * 86400))
        return True
    except RuntimeError:
        return False


def _signed_by(cert: Path, ca_cert: Path) -> bool:
    try:
        _openssl("verify", "-CAfile", str(ca_cert), str(cert))
        return True
    except RuntimeError:
        return False


def ensure_service_cert(out: Path, name: str, ca_key: Path, ca_cert: Path, *, renew: bool = False) -> None:
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    key, cert = d / "key.pem", d / "cert.pem"
    if not renew and key.is_file() and cert.is_file() and _valid_for(cert, 30) and _signed_by(cert, ca_cert):
        return
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "ext.cnf").write_text(
            f"subjectAltName=DNS:{name},DNS:localhost,IP:127.0.0.1\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n"
        )
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{EC_CURVE}", "-nodes",
                 "-keyout", str(t / "key.pem"), "-out", str(t / "req.csr"), "-subj", f"/O=HemaFed/CN={name}")
        _openssl("x509", "-req", "-in", str(t / "req.csr"), "-CA", str(ca_cert), "-CAkey", str(ca_key),
                 "-set_serial", "0x" + secrets.token_hex(16), "-days", str(DAYS_SERVICE), "-sha256",
                 "-extfile", str(t / "ext.cnf"), "-out", str(t / "cert.pem"))
        _write(key, (t / "key.pem").read_text(), 0o644)
        _write(cert, (t / "cert.pem").read_text(), 0o644)


def ensure_tokens(out: Path, pairs: list[tuple[str, str]], rotate: frozenset[str] = frozenset()) -> dict[str, str]:
    path = out / "ca" / "tokens.json"
    tokens: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    changed = False
    for caller, server in pairs:
        key = f"{caller}>{server}"
        if key not in tokens or caller in rotate or server in rotate:
            tokens[key] = secrets.token_urlsafe(32)
            changed = True
    if changed or not path.is_file():
        _write(path, json.dumps(tokens, indent=1, sort_keys=True) + "\n", 0o600)
    return tokens


def generate(out: str | Path, hospitals: int, rotate: list[str] | tuple[str, ...] = ()) -> dict[str, Path]:
    """Create or refresh everything under ``out``; returns ``{service: its folder}``. Services named
    in ``rotate`` get new tokens (every pair they are in) and a new key and certificate."""
    if hospitals < 1:
        raise SystemExit("certs: at least one hospital")
    unknown = sorted(set(rotate) - set(services(hospitals)))
    if unknown:
        raise SystemExit(f"certs: cannot rotate {', '.join(unknown)}: not a service of this stack "
                         f"({', '.join(services(hospitals)[:4])}, ..., hospital-{hospitals})")
    out = Path(out).resolve()
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    ca_key, ca_cert = ensure_ca(out)
    pairs = calls(hospitals)
    tokens = ensure_tokens(out, pairs, frozenset(rotate))
    ca_text = ca_cert.read_text()
    folders = {}
    for name in services(hospitals):
        ensure_service_cert(out, name, ca_key, ca_cert, renew=name in rotate)
        d = out / name
        creds = {server: tokens[f"{caller}>{server}"] for caller, server in pairs if caller == name}
        enrolled = {caller: hashlib.sha256(tokens[f"{caller}>{server}"].encode()).hexdigest()
                    for caller, server in pairs if server == name}
        _write(d / "ca.pem", ca_text, 0o644)
        _write(d / "credentials.json", json.dumps(creds, indent=1, sort_keys=True) + "\n", 0o644)
        _write(d / "enrolment.json", json.dumps(enrolled, indent=1, sort_keys=True) + "\n", 0o644)
        folders[name] = d
    return folders


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="build/certs", help="output folder (default: build/certs)")
    p.add_argument("--hospitals", type=int, default=10, help="hospital-1..N get material (default: 10)")
    p.add_argument("--rotate", nargs="+", default=[], metavar="SERVICE",
                   help="replace these services' tokens, key and certificate (e.g. hospital-2)")
    a = p.parse_args(argv)
    folders = generate(a.out, max(a.hospitals, 1), rotate=a.rotate)
    if a.rotate:
        print(f"certs: rotated {', '.join(a.rotate)}: restart the stack (make down; make up) so that every "
              "service reads its new enrolment")
    print(f"certs: CA {Path(a.out).resolve() / 'ca.pem'}; {len(folders)} services "
          f"({', '.join(list(folders)[:4])}, ...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
