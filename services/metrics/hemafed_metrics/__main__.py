"""``python -m hemafed_metrics [serve|healthcheck]``: HTTPS (a client certificate is asked for but
not required: the dashboard's reads are open to the operator's browser; writes need an enrolled
caller's token), fail-closed without the secrets folder."""

import sys

from hemafed.security import run_service
from hemafed_metrics.settings import MetricsSettings


def _app(settings: MetricsSettings):
    from hemafed_metrics.app import create_app

    return create_app(settings)


if __name__ == "__main__":
    sys.exit(run_service(MetricsSettings, _app, port=8090, client_certs="optional"))
