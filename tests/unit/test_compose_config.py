"""docker-compose.yml, the Makefile and the services' settings agree: every variable the compose
file requires is exported by the Makefile, and every run-config variable reaches a RunConfig field."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from hemafed_aggregator.settings import AggregatorSettings, RunConfig

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = (ROOT / "docker-compose.yml").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()
#: read by TensorFlow / OpenMP / matplotlib themselves, not by our settings
RUNTIME_ENV = {"TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS", "MPLCONFIGDIR"}


def _exported() -> set[str]:
    names: set[str] = set()
    for m in re.finditer(r"^export ((?:[^\n]*\\\n)*[^\n]*)", MAKEFILE, flags=re.M):
        text = m.group(1).replace("\\\n", " ")
        text = text.split(":=")[0].split("=")[0]
        names.update(w for w in text.split() if re.fullmatch(r"[A-Z_][A-Z0-9_]*", w))
    return names


def test_every_required_compose_variable_is_exported_by_make() -> None:
    required = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):\?", COMPOSE))
    # set by the user's shell or compose itself, not by make
    missing = required - _exported() - {"COMPOSE_PROJECT_NAME"}
    assert not missing, f"compose needs these but the Makefile does not export them: {sorted(missing)}"


def test_aggregator_environment_maps_onto_its_settings() -> None:
    env = yaml.safe_load(COMPOSE)["services"]["aggregator"]["environment"]
    fields = {f.upper() for f in AggregatorSettings.model_fields} | {f.upper() for f in RunConfig.model_fields}
    unknown = set(env) - fields - RUNTIME_ENV
    assert not unknown, f"aggregator variables no settings field reads: {sorted(unknown)}"
    for key in ("SCHEDULE", "RECYCLE_FRACTION", "PARTICIPATION", "DEPARTED", "DP_CLIP_NORM", "DP_NOISE_MULTIPLIER"):
        assert key in env
