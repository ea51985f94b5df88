"""``python -m hemafed_aggregator [serve|healthcheck]``: HTTPS (a client certificate is asked for
but not required, so that ``make status`` and the follow tool read the run), fail-closed without
the secrets folder."""

import sys

from hemafed.security import run_service
from hemafed_aggregator.settings import AggregatorSettings


def _app(settings: AggregatorSettings):
    from hemafed_aggregator.app import create_app  # imported only to serve: the health check stays light

    return create_app(settings)


if __name__ == "__main__":
    sys.exit(run_service(AggregatorSettings, _app, port=8080, client_certs="optional"))
