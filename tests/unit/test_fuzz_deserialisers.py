"""Property-based fuzzing (hypothesis) of everything that decodes untrusted input: the model
exchange, image files, the split tool's inputs, service settings, the secrets folder and bearer
tokens. Each raises only its documented exception, never anything else, never a crash."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import ValidationError

from hemafed import security
from hemafed.data.imagefiles import ImageDecodeError, decode_rgb
from hemafed.data.sources import DatasetError, load_class_mapping
from hemafed.data.split import SplitError, parse_source_proportions
from hemafed.exchange import ExchangeError, ModelExchange, check_weights, spec_of
from hemafed_aggregator.settings import AggregatorSettings, RunConfig
from hemafed_hospital.settings import HospitalSettings
from hemafed_metrics.settings import MetricsSettings

FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

VALID = ModelExchange(weights=[np.ones((2, 3), np.float32), np.arange(4, dtype=np.int64)], round=3, num_examples=7,
                      metrics={"loss": 0.5}, extra={"hospital_id": "h1"},
                      aux={"c": [np.zeros(2, np.float32)]}).to_bytes()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


# --------------------------------------------------------------------------- model exchange


def _decode(data: bytes) -> None:
    try:
        msg = ModelExchange.from_bytes(data)
    except ExchangeError:
        return
    # whatever decodes is a well-formed message
    assert msg.round >= 0 and msg.num_examples >= 0
    assert all(isinstance(w, np.ndarray) for w in msg.weights)
    assert all(isinstance(v, float) for v in msg.metrics.values())


@FUZZ
@given(st.binary(max_size=2048))
def test_exchange_random_bytes(data):
    _decode(data)


@FUZZ
@given(st.data())
def test_exchange_mutated_messages(data):
    """Bit flips, truncations and insertions of a valid message."""
    body = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "set"]))
        i = data.draw(st.integers(0, max(len(body) - 1, 0)))
        if op == "flip" and body:
            body[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del body[i:]
        elif op == "insert":
            body[i:i] = data.draw(st.binary(min_size=1, max_size=16))
        elif body:
            body[i] = data.draw(st.integers(0, 255))
    _decode(bytes(body))


@FUZZ
@given(meta=json_values, tensors=st.dictionaries(st.text(max_size=12), st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F64", "I64", "U8", "BOOL", "F16", "BF16", "XX"]),
    "shape": st.lists(st.integers(-2, 5), max_size=3),
    "data_offsets": st.lists(st.integers(-1, 64), min_size=2, max_size=2)}), max_size=3),
    extra_header=st.dictionaries(st.text(max_size=8), json_values, max_size=2), payload=st.binary(max_size=64))
def test_exchange_forged_headers(meta, tensors, extra_header, payload):
    """Well-framed safetensors whose header and hemafed metadata are arbitrary JSON."""
    header = {**extra_header, **tensors, "__metadata__": {"hemafed": json.dumps(meta)}}
    raw = json.dumps(header).encode()
    _decode(struct.pack("<Q", len(raw)) + raw + payload)


@pytest.mark.parametrize("header", [
    {"0000": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}},  # found by the fuzzer: a KeyError inside
    {"0000": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}},
    {"0000": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "__metadata__": {"hemafed": 5}},
    {"0000": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "__metadata__": []},
])
def test_exchange_forged_header_regressions(header):
    header.setdefault("__metadata__", {"hemafed": json.dumps({"round": 1})})
    raw = json.dumps(header).encode()
    with pytest.raises(ExchangeError):
        ModelExchange.from_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 8)


@FUZZ
@given(st.lists(st.tuples(st.lists(st.integers(0, 3), max_size=3), st.sampled_from(["float32", "float64", "int32"]),
                          st.floats(allow_nan=True, allow_infinity=True, width=32)), max_size=4),
       st.floats(min_value=0, max_value=1e6))
def test_check_weights_refuses_only_with_exchange_error(entries, max_norm):
    weights = [np.full(shape, fill, dtype=dtype) if dtype.startswith("float") else np.zeros(shape, dtype)
               for shape, dtype, fill in entries]
    spec = spec_of([np.zeros(s, d) for s, d, _ in entries])
    try:
        check_weights(weights, spec, max_norm=max_norm)
    except ExchangeError:
        return
    assert all(np.isfinite(w).all() for w in weights)


# --------------------------------------------------------------------------- images


def _image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


IMAGES = {fmt: _image_bytes(fmt) for fmt in ("PNG", "JPEG", "BMP", "TIFF")}


def _decode_image(tmp_path: Path, data: bytes, name: str = "x.png") -> None:
    path = tmp_path / name
    path.write_bytes(data)
    try:
        out = decode_rgb(path, 16)
    except ImageDecodeError as exc:
        assert exc.reason in {"corrupt", "unreadable", "too_large"}
        return
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8


@FUZZ
@given(st.binary(max_size=512), st.sampled_from(["x.png", "x.jpg", "x.bmp", "x.tif"]))
def test_image_random_bytes(tmp_path, data, name):
    _decode_image(tmp_path, data, name)


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about the corrupt TIFF tags it skips
@FUZZ
@given(st.sampled_from(sorted(IMAGES)), st.data())
def test_image_mutated_files(tmp_path, fmt, data):
    body = bytearray(IMAGES[fmt])
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(body) - 1))
        if data.draw(st.booleans()):
            body[i] = data.draw(st.integers(0, 255))
        else:
            del body[i:]
            if not body:
                break
    _decode_image(tmp_path, bytes(body), f"x.{fmt.lower()}")


# --------------------------------------------------------------------------- split tool inputs


@FUZZ
@given(st.one_of(json_values.map(json.dumps), st.text(max_size=200)), st.sampled_from([".json", ".yaml", ".yml"]))
def test_class_mapping_files(tmp_path, text, suffix):
    path = tmp_path / f"mapping{suffix}"
    path.write_text(text, encoding="utf-8")
    try:
        mapping = load_class_mapping(path)
    except DatasetError:
        return
    assert all(isinstance(k, str) and (v is None or (isinstance(v, str) and v.strip())) for k, v in mapping.items())


@FUZZ
@given(st.text(alphabet="0123456789.,;-+eE naif", max_size=40), st.integers(1, 4), st.integers(1, 3))
def test_source_proportions(text, clients, sources):
    try:
        w = parse_source_proportions(text, clients, sources)
    except SplitError:
        return
    assert w.shape == (clients, sources) and np.isfinite(w).all() and (w >= 0).all()


# --------------------------------------------------------------------------- settings


@FUZZ
@given(hospitals=st.text(max_size=60), params=st.one_of(json_values.map(json.dumps), st.text(max_size=40)),
       participation=st.text(max_size=30), classes=st.text(max_size=30), run_id=st.text(max_size=70),
       path=st.text(max_size=30))
def test_aggregator_settings(hospitals, params, participation, classes, run_id, path):
    for build in (lambda: AggregatorSettings(hospitals=hospitals, output_dir=path or "/results"),
                  lambda: RunConfig(strategy_params=params, participation=participation, classes=classes,
                                    run_id=run_id or "run")):
        try:
            build()
        except ValidationError:
            pass


@FUZZ
@given(st.text(max_size=70), st.text(max_size=40), st.text(max_size=40))
def test_hospital_and_metrics_settings(hospital_id, data_dir, db_path):
    try:
        s = HospitalSettings(hospital_id=hospital_id, data_dir=data_dir or "/data")
    except ValidationError:
        pass
    else:
        security.check_name(s.hospital_id)
        assert ".." not in s.data_dir.parts
    try:
        MetricsSettings(db_path=db_path or ":memory:")
    except ValidationError:
        pass


@FUZZ
@given(st.dictionaries(st.sampled_from(["HOSPITAL_ID", "DATA_DIR", "VAL_FRACTION", "SPLIT_SEED", "TF_THREADS",
                                        "SECRETS_DIR", "INSECURE", "MAX_BODY_BYTES", "SAMPLE_INTERVAL"]),
                       st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                               max_size=20), min_size=1))
def test_settings_from_the_environment(monkeypatch, env):
    with monkeypatch.context() as m:
        for k, v in env.items():
            m.setenv(k, v)
        try:
            HospitalSettings()
        except ValidationError:
            pass


# --------------------------------------------------------------------------- secrets and tokens


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory):
    from tests.unit.security_helpers import make_certs

    return make_certs(tmp_path_factory.mktemp("certs"), hospitals=1)["hospital-1"]


@FUZZ
@given(st.sampled_from(["credentials.json", "enrolment.json"]),
       st.one_of(json_values.map(json.dumps), st.binary(max_size=100).map(lambda b: b.decode("latin-1"))))
def test_secrets_folder_content(tmp_path_factory, secrets_dir, which, text):
    d = tmp_path_factory.mktemp("s")
    for f in secrets_dir.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    (d / which).write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        s = security.ServiceSecrets.load(d)
    except security.SecurityConfigError:
        return
    assert all(isinstance(t, str) for t in s.credentials.values())


@FUZZ
@given(st.text(max_size=300))
def test_token_identification(tok):
    e = security.Enrolment.from_tokens({"aggregator": "a" * 43})
    assume(tok != "a" * 43)
    assert e.identify(tok) is None
