"""scripts/compose_override.py: hospitals past 10."""

import subprocess
import sys
from pathlib import Path

import yaml

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compose_override.py"


def test_override_adds_hospitals_11_to_n_with_their_own_mount_and_profiles():
    out = subprocess.run([sys.executable, str(SCRIPT), "12"], capture_output=True, text=True, check=True).stdout
    doc = yaml.safe_load(out)
    assert set(doc["services"]) == {"hospital-11", "hospital-12"}
    h11 = doc["services"]["hospital-11"]
    assert h11["extends"] == {"file": "docker-compose.yml", "service": "hospital-1"}
    assert h11["profiles"] == ["h11", "h12"]
    assert h11["environment"] == {"HOSPITAL_ID": "hospital-11"}
    assert h11["volumes"] == ["${DATA_MOUNTS:?}/hospital-11:/data:ro",
                              "${CERTS_DIR:?}/hospital-11:/run/secrets/hemafed:ro"]  # its own TLS material only


def test_no_override_needed_up_to_ten():
    proc = subprocess.run([sys.executable, str(SCRIPT), "8"], capture_output=True, text=True)
    assert proc.returncode != 0 and "needs no override" in proc.stderr


def test_compose_file_profiles_start_hospitals_4_to_n():
    doc = yaml.safe_load((SCRIPT.parents[1] / "docker-compose.yml").read_text())
    services = doc["services"]
    for k in (1, 2, 3):
        assert "profiles" not in services[f"hospital-{k}"]
    for k in range(4, 11):
        assert services[f"hospital-{k}"]["profiles"] == [f"h{j}" for j in range(k, 11)]
        assert services[f"hospital-{k}"]["volumes"] == [f"${{DATA_MOUNTS:?}}/hospital-{k}:/data:ro",
                                                        f"${{CERTS_DIR:?}}/hospital-{k}:/run/secrets/hemafed:ro"]
        assert services[f"hospital-{k}"]["environment"]["HOSPITAL_ID"] == f"hospital-{k}"
    assert all("healthcheck" in s for s in services.values())
