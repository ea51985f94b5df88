"""The model-exchange format: safetensors body + JSON metadata, strict decoding."""

import json
import struct

import numpy as np
import pytest

from hemafed.exchange import ExchangeError, ModelExchange, check_weights, spec_of


def _weights():
    return [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([0.5, -1.5], dtype=np.float32)]


def test_round_trip_keeps_every_field():
    msg = ModelExchange(weights=_weights(), round=3, num_examples=120, metrics={"train_loss": 0.25},
                        extra={"hospital_id": "hospital-2"}, aux={"c": [np.ones(4, np.float32)]})
    back = ModelExchange.from_bytes(msg.to_bytes())
    assert back.round == 3 and back.num_examples == 120
    assert back.metrics == {"train_loss": 0.25}
    assert back.extra == {"hospital_id": "hospital-2"}
    assert len(back.weights) == 2
    np.testing.assert_array_equal(back.weights[0], msg.weights[0])
    np.testing.assert_array_equal(back.weights[1], msg.weights[1])
    assert list(back.aux) == ["c"] and back.aux["c"][0].tolist() == [1, 1, 1, 1]
    assert back.nbytes == 6 * 4 + 2 * 4 + 4 * 4


def test_order_survives_more_than_ten_tensors():
    ws = [np.full((1,), i, np.float32) for i in range(12)]
    back = ModelExchange.from_bytes(ModelExchange(weights=ws, round=1).to_bytes())
    assert [float(w[0]) for w in back.weights] == list(range(12))


@pytest.mark.parametrize("body, message", [
    (b"", "too short"),
    (b"not safetensors at all", "out of range"),
    (struct.pack("<Q", 2) + b"{}", "missing 'hemafed' metadata"),
    (struct.pack("<Q", 4) + b"\xff\xfe{}", "unreadable"),
])
def test_malformed_bodies_are_refused_with_a_reason(body, message):
    with pytest.raises(ExchangeError, match=message):
        ModelExchange.from_bytes(body)


def test_foreign_tensor_names_and_dtypes_are_refused():
    from safetensors.numpy import save

    meta = {"hemafed": json.dumps({"round": 1})}
    with pytest.raises(ExchangeError, match="consecutive"):
        ModelExchange.from_bytes(save({"0000": np.zeros(1, np.float32), "0002": np.zeros(1, np.float32)}, metadata=meta))
    with pytest.raises(ExchangeError, match="dtype"):
        ModelExchange.from_bytes(save({"0000": np.zeros(1, np.uint8)}, metadata=meta))
    with pytest.raises(ExchangeError, match="bad metadata"):
        ModelExchange.from_bytes(save({"0000": np.zeros(1, np.float32)}, metadata={"hemafed": json.dumps({})}))


def test_check_weights_names_the_problem():
    spec = spec_of(_weights())
    assert spec == [((2, 3), "float32"), ((2,), "float32")]
    check_weights(_weights(), spec)  # fine
    with pytest.raises(ExchangeError, match="expected 2 tensors, got 1"):
        check_weights(_weights()[:1], spec)
    with pytest.raises(ExchangeError, match=r"tensor 0: shape \(3, 2\)"):
        check_weights([np.zeros((3, 2), np.float32), _weights()[1]], spec)
    with pytest.raises(ExchangeError, match="tensor 1: dtype float64"):
        check_weights([_weights()[0], np.zeros(2)], spec)
    bad = _weights()
    bad[1][0] = np.nan
    with pytest.raises(ExchangeError, match="tensor 1: contains NaN or Inf"):
        check_weights(bad, spec)
    with pytest.raises(ExchangeError, match="exceeds the limit"):
        check_weights(_weights(), spec, max_norm=1.0)
