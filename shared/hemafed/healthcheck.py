"""The containers' health check: ``python3 -m hemafed.healthcheck URL [SECRETS_DIR]``.

Standard library only, so that it starts in a fraction of a second even on a loaded host (the
service packages pull in FastAPI and pydantic, which take seconds to import there). Compose passes
the URL with the stack's scheme (``https://127.0.0.1:8000/health``, or ``http://`` with ``TLS=off``)
and the service's secrets folder (:mod:`hemafed.security`): the server is verified against the
private CA and the service's own certificate is presented (hospitals require one). Exit status 0
when ``/health`` answers 200, else 1 with the reason on stderr.
"""

from __future__ import annotations

import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path


def check(url: str, secrets_dir: str | Path | None = None, timeout: float = 3.0) -> int:
    ctx = None
    if url.startswith("https://"):
        if secrets_dir is None:
            print("unhealthy: an https URL needs the secrets folder", file=sys.stderr)
            return 1
        d = Path(secrets_dir)
        try:
            ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
            ctx.load_cert_chain(str(d / "cert.pem"), str(d / "key.pem"))
        except (OSError, ssl.SSLError) as exc:
            print(f"unhealthy: TLS material in {d}: {exc}", file=sys.stderr)
            return 1
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as r:  # noqa: S310 - our own URL
            status = r.status
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: HTTP {status}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    return check(args[0], args[1] if len(args) == 2 else None)


if __name__ == "__main__":
    sys.exit(main())
