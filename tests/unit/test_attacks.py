"""TEST-ONLY fault injection (hemafed_hospital.attacks) and the hospital's answer to repeated or
out-of-date /fit requests (hemafed_hospital.replay): arithmetic, settings, and the real agent
through its API (ASGI transport, a tiny CNN on 16 px synthetic images)."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from hemafed.data.synthetic import CLASSES
from hemafed.exchange import ModelExchange
from hemafed.schemas import FitConfig, FitInstructions, TaskSpec
from hemafed_aggregator.clients import HospitalError, HttpHospitalClient
from hemafed_aggregator.strategies.base import FitIns
from hemafed_hospital.app import create_app
from hemafed_hospital.attacks import Attack
from hemafed_hospital.settings import HospitalSettings
from tests.unit.helpers import synthetic_folder

TASK = TaskSpec(model="cnn", image_size=16, classes=list(CLASSES), seed=1)
CONFIG = FitConfig(local_epochs=1, batch_size=16, augment=False)


# --------------------------------------------------------------------------- arithmetic


def _reply(weights, rnd=2):
    return ModelExchange(weights=[w.copy() for w in weights], round=rnd, num_examples=5)


G = [np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32), np.array([0.5, -0.5], dtype=np.float32)]
W = [np.array([[1.5, 2.0], [2.0, 4.0]], dtype=np.float32), np.array([0.5, 0.0], dtype=np.float32)]


@pytest.mark.parametrize(("name", "expected"), [
    ("sign_flip", [G[0] - 10 * (W[0] - G[0]), G[1] - 10 * (W[1] - G[1])]),
    ("scale", [G[0] + 10 * (W[0] - G[0]), G[1] + 10 * (W[1] - G[1])]),
])
def test_weight_attacks_are_the_documented_functions_of_the_update(name, expected):
    a = Attack.for_hospital("hospital-2", name, "hospital-2", scale=10.0, noise_std=1.0)
    out = a.poison(G, _reply(W))
    assert out.round == 2 and out.num_examples == 5
    for got, want in zip(out.weights, expected):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_noise_attack_replaces_the_update_with_seeded_gaussian_noise():
    a = Attack.for_hospital("hospital-2", "noise", "hospital-2", scale=10.0, noise_std=2.0, seed=4)
    big = [np.zeros((200, 100), np.float32)]
    out = a.poison(big, _reply([np.ones((200, 100), np.float32)]))
    noise = out.weights[0]
    assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 2.0) < 0.05  # the honest 1s are gone
    again = a.poison(big, _reply([np.ones((200, 100), np.float32)]))
    assert np.array_equal(again.weights[0], noise)  # seeded by (seed, round): a replay sends the same


def test_label_flip_reverses_the_class_order_and_leaves_weights_alone():
    a = Attack.for_hospital("h", "label_flip", "h", scale=10.0, noise_std=1.0)
    y = np.array([0, 1, 7, 3], dtype=np.int64)
    assert a.labels(y, 8).tolist() == [7, 6, 0, 4] and a.labels(y, 8).dtype == np.int64
    out = a.poison(G, _reply(W))
    assert all(np.array_equal(x, w) for x, w in zip(out.weights, W))


def test_only_the_named_attacker_attacks_and_bad_names_are_refused():
    assert not Attack.for_hospital("hospital-1", "scale", "hospital-2,hospital-3", scale=10, noise_std=1).active
    assert Attack.for_hospital("hospital-3", "scale", "hospital-2, hospital-3", scale=10, noise_std=1).active
    assert not Attack.for_hospital("hospital-2", "none", "hospital-2", scale=10, noise_std=1).active
    none = Attack()
    assert none.labels(np.array([1, 2]), 8).tolist() == [1, 2]
    assert none.poison(G, _reply(W)).weights[0] is not None
    with pytest.raises(ValueError, match="ATTACK must be one of"):
        Attack.for_hospital("h", "backdoor", "h", scale=10, noise_std=1)
    with pytest.raises(ValidationError):
        HospitalSettings(hospital_id="h", attack="backdoor")
    with pytest.raises(ValidationError):
        HospitalSettings(hospital_id="h", attack="scale", attack_scale=0)
    s = HospitalSettings(hospital_id="h")
    assert (s.attack, s.attacker, s.attack_scale, s.attack_noise_std) == ("none", "", 10.0, 1.0)


# --------------------------------------------------------------------------- through the API



@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return synthetic_folder(tmp_path_factory.mktemp("hospital-2"), n_per_class=3, size=16)


@pytest.fixture(scope="module")
def initial():
    from hemafed.models import build_for_task, get_exchanged

    return get_exchanged(build_for_task(TASK))


def _app(data_dir, **attack):
    settings = HospitalSettings(hospital_id="hospital-2", data_dir=data_dir, **attack)
    return create_app(settings, report_resources=False)


def _body(weights, rnd=1, run_id="run-a", config=CONFIG) -> bytes:
    extra = {"instructions": FitInstructions(task=TASK, config=config).model_dump(mode="json")}
    if run_id is not None:
        extra["run_id"] = run_id
    return ModelExchange(weights=weights, round=rnd, extra=extra).to_bytes()


async def _post(app, body):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hospital-2") as c:
        return await c.post("/fit", content=body)


@pytest.mark.anyio
async def test_a_scaling_attacker_sends_ten_times_its_honest_update(data_dir, initial):
    honest = ModelExchange.from_bytes((await _post(_app(data_dir), _body(initial))).content)
    r = await _post(_app(data_dir, attack="scale", attacker="hospital-2", attack_scale=10.0), _body(initial))
    assert r.status_code == 200, r.text
    poisoned = ModelExchange.from_bytes(r.content)
    assert poisoned.round == 1 and poisoned.num_examples == honest.num_examples
    u_honest = np.concatenate([(w - g).ravel() for w, g in zip(honest.weights, initial)]).astype(np.float64)
    u_poison = np.concatenate([(w - g).ravel() for w, g in zip(poisoned.weights, initial)]).astype(np.float64)
    assert np.linalg.norm(u_honest) > 0
    # the same seeded local training, then x10 (float32 rounding and CPU kernels: not bit for bit)
    np.testing.assert_allclose(u_poison, 10 * u_honest, atol=1e-3 * float(np.abs(10 * u_honest).max()))


@pytest.mark.anyio
async def test_a_repeated_request_gets_the_same_answer_without_training_again(data_dir, initial):
    app = _app(data_dir)
    agent = app.state.agent
    first = await _post(app, _body(initial, rnd=3))
    again = await _post(app, _body(initial, rnd=3))
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    assert agent.replay.replayed == 1
    # an older round of the same run: refused, named
    old = await _post(app, _body(initial, rnd=2))
    assert old.status_code == 409
    assert old.json()["detail"] == ("round 2 of run 'run-a' is older than round 3, which this hospital has already "
                                    "trained: a late or replayed request, refused")
    # the same round with other content (other weights): trained again, not the remembered answer
    other = [w + 0.01 for w in initial]
    changed = await _post(app, _body(other, rnd=3))
    assert changed.status_code == 200 and changed.content != first.content
    assert agent.replay.replayed == 1
    # another run (another RUN_ID) starts again at round 1; no run id: never refused as stale
    assert (await _post(app, _body(initial, rnd=1, run_id="run-b"))).status_code == 200
    assert (await _post(app, _body(initial, rnd=1, run_id=None))).status_code == 200


@pytest.mark.anyio
async def test_a_duplicate_sent_while_training_waits_for_the_same_answer(data_dir, initial):
    app = _app(data_dir)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hospital-2") as c:
        body = _body(initial, rnd=1)
        a, b = await asyncio.gather(c.post("/fit", content=body), c.post("/fit", content=body))
        assert a.status_code == b.status_code == 200, (a.text, b.text)
        assert a.content == b.content
        assert app.state.agent.replay.replayed == 1


@pytest.mark.anyio
async def test_the_aggregator_refuses_an_answer_for_another_round():
    """A late answer (a reply for round 2 while round 3 is running) is rejected, never aggregated."""
    stale = ModelExchange(weights=[np.zeros(2, np.float32)], round=2, num_examples=4).to_bytes()
    transport = httpx.MockTransport(lambda req: httpx.Response(200, content=stale))
    async with httpx.AsyncClient(transport=transport) as http:
        client = HttpHospitalClient("hospital-1", "http://hospital-1", http, run_id="run-a")
        with pytest.raises(HospitalError) as err:
            await client.fit(3, FitIns(weights=[np.zeros(2, np.float32)], config=CONFIG), TASK)
    assert err.value.status == "rejected"
    assert str(err.value) == "update is for round 2, not the current round 3"


@pytest.mark.anyio
async def test_the_aggregator_names_its_run_in_every_fit():
    seen = []

    def handler(req: httpx.Request) -> httpx.Response:
        msg = ModelExchange.from_bytes(req.content)
        seen.append(msg.extra.get("run_id"))
        return httpx.Response(200, content=ModelExchange(weights=msg.weights, round=msg.round, num_examples=1).to_bytes())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = HttpHospitalClient("hospital-1", "http://hospital-1", http, run_id="run-a")
        res, _ = await client.fit(1, FitIns(weights=[np.ones(2, np.float32)], config=CONFIG), TASK)
    assert seen == ["run-a"] and res.hospital_id == "hospital-1" and res.num_examples == 1


@pytest.mark.anyio
async def test_the_aggregator_asks_for_changed_tensors_only_and_fills_in_the_rest():
    """Every /fit asks the hospital to leave out the tensors it sends back unchanged; the client
    puts back what it sent there, so the server sees a full update; the bytes counted are the reply's."""
    sent = [np.full(3, 1.0, np.float32), np.full((2, 2), 2.0, np.float32), np.full(4, 3.0, np.float32)]
    replies = []

    def handler(req: httpx.Request) -> httpx.Response:
        msg = ModelExchange.from_bytes(req.content)
        assert FitInstructions.model_validate(msg.extra["instructions"]).omit_unchanged is True
        body = ModelExchange(weights=[np.full((2, 2), 5.0, np.float32)], round=msg.round, num_examples=7,
                             extra={"unchanged": [0, 2]}).to_bytes()
        replies.append(body)
        return httpx.Response(200, content=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = HttpHospitalClient("hospital-1", "http://hospital-1", http, run_id="run-a")
        res, nbytes = await client.fit(2, FitIns(weights=sent, config=CONFIG), TASK)
    assert [w.tolist() for w in res.weights] == [[1.0] * 3, [[5.0, 5.0], [5.0, 5.0]], [3.0] * 4]
    assert res.weights[0] is sent[0] and res.weights[2] is sent[2]
    assert res.num_examples == 7 and res.hospital_id == "hospital-1"
    assert nbytes == len(replies[0])


@pytest.mark.anyio
@pytest.mark.parametrize("unchanged, message", [
    ([2, 0], "'unchanged' must be strictly increasing"),
    ([5], "'unchanged' names a position outside the 3 tensors sent"),
    ([0], "1 tensors carried and 1 left out do not make the 3 sent"),
    ("all", "'unchanged' must be a list of tensor positions"),
])
async def test_the_aggregator_rejects_a_reply_whose_left_out_tensors_do_not_add_up(unchanged, message):
    sent = [np.zeros(2, np.float32)] * 3
    body = ModelExchange(weights=[np.ones(2, np.float32)], round=1, num_examples=4,
                         extra={"unchanged": unchanged}).to_bytes()
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda req: httpx.Response(200, content=body))) as http:
        client = HttpHospitalClient("hospital-1", "http://hospital-1", http)
        with pytest.raises(HospitalError) as err:
            await client.fit(1, FitIns(weights=sent, config=CONFIG), TASK)
    assert err.value.status == "rejected"
    assert str(err.value) == f"unusable update: {message}"
