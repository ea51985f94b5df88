"""The three REST APIs fuzzed from their own OpenAPI schemas (schemathesis over ASGI, in process):
generated valid and invalid requests never get a 5xx. Each service runs with its real secrets
folder; requests carry an enrolled caller's token (so that handlers are reached), and one pass
per service goes without it (so that the refusal path is fuzzed too). Example counts are modest
(CI budget) and derandomized (reproducible); raise FUZZ_EXAMPLES locally for a deeper run."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from hemafed_aggregator.app import create_app as aggregator_app
from hemafed_aggregator.settings import AggregatorSettings, RunConfig
from hemafed_hospital.app import create_app as hospital_app
from hemafed_hospital.settings import HospitalSettings
from hemafed_metrics.app import create_app as metrics_app
from hemafed_metrics.settings import MetricsSettings
from hemafed_metrics.store import InMemoryStore
from tests.unit.helpers import synthetic_folder
from tests.unit.security_helpers import bearer, make_certs, token

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "8"))
#: upstream statuses by design: the metrics service's prediction proxy answers 502/503/504 when the
#: aggregator is absent or failing (hemafed_metrics.upstream); fuzzed on the aggregator itself
EXCLUDED = {("metrics", "POST", "/api/predict")}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"), hospitals=1)


@pytest.fixture(scope="module")
def apps(folders, tmp_path_factory):
    data = synthetic_folder(tmp_path_factory.mktemp("hospital-1"), n_per_class=2, size=16)
    return {
        "hospital-1": (hospital_app(HospitalSettings(hospital_id="hospital-1", data_dir=data,
                                                     secrets_dir=folders["hospital-1"], max_body_bytes=2_000_000),
                                    report_resources=False), "aggregator"),
        "metrics": (metrics_app(MetricsSettings(db_path=":memory:", sample_interval=0,
                                                secrets_dir=folders["metrics"]), store=InMemoryStore()),
                    "hospital-1"),
        "aggregator": (aggregator_app(AggregatorSettings(hospitals="hospital-1=https://hospital-1:8000",
                                                         secrets_dir=folders["aggregator"], auto_start=False),
                                      RunConfig(image_size=16), report_resources=False), "metrics"),
    }


def _fuzz(schema, server: str, headers: dict[str, str]) -> int:
    ran = 0
    for result in schema.get_all_operations():
        op = result.ok()
        if (server, op.method.upper(), op.path) in EXCLUDED:
            continue

        @given(case=op.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            case.call_and_validate(headers=headers, checks=[not_a_server_error])

        run()
        ran += 1
    return ran


@pytest.mark.parametrize("server", ["hospital-1", "metrics", "aggregator"])
def test_api_never_answers_5xx(apps, folders, server):
    app, caller = apps[server]
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ran = _fuzz(schema, server, bearer(token(folders, caller, server)))
    assert ran >= {"hospital-1": 4, "metrics": 8, "aggregator": 3}[server]


@pytest.mark.parametrize("server", ["hospital-1", "metrics", "aggregator"])
def test_api_without_credentials_never_answers_5xx(apps, server):
    app, _ = apps[server]
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    assert _fuzz(schema, server, {"Authorization": "Bearer " + "x" * 43}) >= 3
