"""The model-exchange format: safetensors body + JSON metadata, strict decoding."""

import json
import struct

import numpy as np
import pytest

from hemafed.exchange import (
    HELD_KEY,
    UNCHANGED_KEY,
    ExchangeError,
    MissingTensors,
    ModelExchange,
    check_weights,
    fill_unchanged,
    omit_unchanged,
    refer_to_held,
    request_digest,
    resolve_held,
    spec_of,
    tensor_digest,
)


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


# --------------------------------------------------------------------------- replies without unchanged tensors


def test_omit_unchanged_keeps_only_what_changed_and_fill_puts_back_what_was_sent():
    sent = [np.arange(6, dtype=np.float32).reshape(2, 3), np.zeros(2, np.float32), np.ones(3, np.float32),
            np.full(1, -0.0, np.float32)]
    back = [sent[0].copy(), np.array([0.0, 0.5], np.float32), sent[2].copy(), np.zeros(1, np.float32)]
    kept, left_out = omit_unchanged(back, sent)
    # bit for bit: +0.0 is not -0.0, so the last tensor travels although it compares equal
    assert left_out == [0, 2]
    assert [k.tolist() for k in kept] == [[0.0, 0.5], [0.0]]
    msg = ModelExchange(weights=kept, round=4, num_examples=9, extra={UNCHANGED_KEY: left_out})
    wire = ModelExchange.from_bytes(msg.to_bytes())
    assert wire.extra == {"unchanged": [0, 2]}
    full = fill_unchanged(sent, wire.weights, wire.extra.get(UNCHANGED_KEY))
    assert len(full) == 4
    for a, b in zip(full, back):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert full[0] is sent[0] and full[2] is sent[2]
    assert msg.nbytes == 2 * 4 + 1 * 4  # only the changed tensors' bytes travel


def test_a_reply_with_nothing_changed_carries_no_tensor():
    sent = _weights()
    kept, left_out = omit_unchanged([w.copy() for w in sent], sent)
    assert kept == [] and left_out == [0, 1]
    wire = ModelExchange.from_bytes(ModelExchange(weights=kept, round=1, extra={UNCHANGED_KEY: left_out}).to_bytes())
    assert wire.weights == []
    full = fill_unchanged(sent, wire.weights, wire.extra[UNCHANGED_KEY])
    assert [f.tolist() for f in full] == [w.tolist() for w in sent]


def test_omit_unchanged_compares_shape_and_dtype_too():
    sent = [np.zeros(4, np.float32), np.zeros(4, np.float32)]
    kept, left_out = omit_unchanged([np.zeros(4, np.float64), np.zeros((2, 2), np.float32)], sent)
    assert left_out == [] and [k.shape for k in kept] == [(4,), (2, 2)]
    with pytest.raises(ValueError, match="1 tensors against 2 received"):
        omit_unchanged(sent[:1], sent)


def test_fill_unchanged_without_the_key_is_the_reply_as_it_came():
    partial = _weights()
    assert fill_unchanged([], partial, None) is partial


@pytest.mark.parametrize("unchanged, message", [
    ("0,1", "must be a list of tensor positions"),
    ([0, "1"], "must be a list of tensor positions"),
    ([True], "must be a list of tensor positions"),
    ([0.0], "must be a list of tensor positions"),
    ([3], "outside the 3 tensors sent"),
    ([-1], "outside the 3 tensors sent"),
    ([1, 0], "strictly increasing"),
    ([1, 1], "strictly increasing"),
    ([0], "1 tensors carried and 1 left out do not make the 3 sent"),
    ([0, 1, 2], "1 tensors carried and 3 left out do not make the 3 sent"),
])
def test_fill_unchanged_refuses_positions_that_do_not_add_up(unchanged, message):
    sent = [np.zeros(1, np.float32)] * 3
    with pytest.raises(ExchangeError, match=message):
        fill_unchanged(sent, [np.ones(1, np.float32)], unchanged)


# --------------------------------------------------------------------------- requests referring to held tensors


def test_tensor_digest_covers_bytes_dtype_and_shape():
    a = np.arange(6, dtype=np.float32)
    assert tensor_digest(a) == tensor_digest(a.copy()) and len(tensor_digest(a)) == 64
    assert tensor_digest(a) != tensor_digest(a.reshape(2, 3))
    assert tensor_digest(a) != tensor_digest(a.astype(np.float64))
    b = a.copy()
    b[5] = np.nextafter(b[5], np.float32(10))
    assert tensor_digest(a) != tensor_digest(b)
    assert tensor_digest(a.reshape(2, 3).T) == tensor_digest(np.ascontiguousarray(a.reshape(2, 3).T))


def test_a_request_refers_to_what_the_receiver_holds_and_resolves_to_the_same_weights():
    previous = [np.full(3, 1.0, np.float32), np.full((2, 2), 2.0, np.float32), np.full(4, 3.0, np.float32)]
    held = {tensor_digest(w): w for w in previous}
    now = [previous[0].copy(), np.full((2, 2), 9.0, np.float32), previous[2].copy()]
    carried, refs = refer_to_held(now, frozenset(held))
    assert [c.tolist() for c in carried] == [[[9.0, 9.0], [9.0, 9.0]]]
    assert refs == [[0, tensor_digest(previous[0])], [2, tensor_digest(previous[2])]]
    wire = ModelExchange.from_bytes(ModelExchange(weights=carried, round=2, extra={HELD_KEY: refs}).to_bytes())
    full = resolve_held(wire.weights, wire.extra[HELD_KEY], held)
    assert [w.tolist() for w in full] == [w.tolist() for w in now]
    assert full[0] is previous[0] and full[2] is previous[2]
    assert resolve_held(carried, None, held) is carried  # nothing referred to
    nothing, none = refer_to_held(now, frozenset())
    assert none == [] and len(nothing) == 3


def test_a_reference_to_a_tensor_not_held_is_missing_and_bad_references_are_refused():
    w = np.ones(2, np.float32)
    d = tensor_digest(w)
    with pytest.raises(MissingTensors, match=r"1 of the 1 tensors referred to are not held here \(positions \[1\]\)"):
        resolve_held([w], [[1, d]], {})
    assert issubclass(MissingTensors, ExchangeError)
    for refs in ("all", [[0]], [["0", d]], [[0, "abc"]], [[0, d.upper()]], [[True, d]]):
        with pytest.raises(ExchangeError, match="must be a list of \\[position, SHA-256 hex digest\\] pairs"):
            resolve_held([w], refs, {d: w})
    for refs in ([[2, d]], [[-1, d]], [[1, d], [0, d]], [[0, d], [0, d]]):
        with pytest.raises(ExchangeError, match="strictly increasing and below"):
            resolve_held([w], refs, {d: w})


def test_a_request_digest_is_of_what_it_asks_for_not_of_how_its_tensors_travelled():
    weights = [np.full(3, 1.0, np.float32), np.full((2, 2), 2.0, np.float32)]
    extra = {"instructions": {"config": {"local_epochs": 1}}, "run_id": "run-a"}
    whole = ModelExchange(weights=weights, round=4, extra=extra)
    held = {tensor_digest(w): w for w in weights}
    carried, refs = refer_to_held(weights, frozenset(held))
    wire = ModelExchange.from_bytes(ModelExchange(weights=carried, round=4, extra={**extra, HELD_KEY: refs}).to_bytes())
    assert wire.to_bytes() != whole.to_bytes()  # other bytes ...
    wire.weights = resolve_held(wire.weights, wire.extra[HELD_KEY], held)
    digest = request_digest(whole)
    assert len(digest) == 64 and request_digest(wire) == digest  # ... the same request
    assert request_digest(whole, [tensor_digest(w) for w in weights]) == digest
    # anything it asks for changes it: the round, the instructions, a weight, an aux tensor, the counts
    changed = [
        ModelExchange(weights=weights, round=5, extra=extra),
        ModelExchange(weights=weights, round=4, extra={**extra, "run_id": "run-b"}),
        ModelExchange(weights=[weights[0], weights[1] + 1], round=4, extra=extra),
        ModelExchange(weights=weights, round=4, extra=extra, aux={"c": [np.zeros(2, np.float32)]}),
        ModelExchange(weights=weights, round=4, extra=extra, num_examples=3),
        ModelExchange(weights=weights, round=4, extra=extra, metrics={"loss": 1.0}),
    ]
    assert len({request_digest(m) for m in changed} | {digest}) == len(changed) + 1
    with pytest.raises(ValueError, match="1 digests for 2 weights"):
        request_digest(whole, [tensor_digest(weights[0])])
