"""``python -m hemafed_hospital [serve|healthcheck]``: HTTPS with mutual TLS (the aggregator must
present a certificate from the private CA), fail-closed without the secrets folder."""

import sys

from hemafed.security import run_service
from hemafed_hospital.settings import HospitalSettings


def _app(settings: HospitalSettings):
    from hemafed_hospital.app import create_app  # imported only to serve: the health check stays light

    return create_app(settings)


if __name__ == "__main__":
    sys.exit(run_service(HospitalSettings, _app, port=8000, client_certs="required"))
