"""What does not change does not travel: requests refer to the weights a hospital holds
(``extra["held"]``), replies leave out what training did not change (``extra["unchanged"]``).
The aggregator's real client against a real hospital app (ASGI transport, no sockets)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from hemafed.data.synthetic import CLASSES
from hemafed.exchange import HELD_KEY, ModelExchange, tensor_digest
from hemafed.schemas import FitConfig, TaskSpec
from hemafed_aggregator.clients import HospitalError, HttpHospitalClient
from hemafed_aggregator.strategies.base import FitIns
from hemafed_hospital.app import create_app
from hemafed_hospital.settings import HospitalSettings
from tests.unit.helpers import synthetic_folder

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.anyio

TASK = TaskSpec(model="cnn", image_size=16, classes=list(CLASSES), seed=1)
CONFIG = FitConfig(local_epochs=1, batch_size=16, augment=False)
CLASSIFIER = CONFIG.model_copy(update={"classifier_only": True, "optimizer": "sgd", "learning_rate": 0.05})


@dataclass
class Setup:
    data_dir: Path
    initial: list[np.ndarray]
    #: for each exchanged tensor: is it the classifier's?
    heads: list[bool]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    from hemafed.models import build_for_task, get_exchanged
    from hemafed.training import classifier_mask

    model = build_for_task(TASK)
    return Setup(synthetic_folder(tmp_path_factory.mktemp("hospital-1"), n_per_class=3, size=16),
                 get_exchanged(model), classifier_mask(model))


def _app(data_dir):
    return create_app(HospitalSettings(hospital_id="hospital-1", data_dir=data_dir), report_resources=False)


def _client(app) -> HttpHospitalClient:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    return HttpHospitalClient("hospital-1", "http://hospital-1", http, run_id="run-a")


async def test_classifier_rounds_send_only_the_classifier_both_ways(setup):
    data_dir, initial, heads = setup.data_dir, setup.initial, setup.heads
    whole = len(ModelExchange(weights=initial, round=1).to_bytes())
    head_bytes = sum(w.nbytes for w, h in zip(initial, heads) if h)
    app = _app(data_dir)
    client = _client(app)
    assert client.accepts_held is False
    r1, up1 = await client.fit(1, FitIns(weights=initial, config=CONFIG), TASK)
    assert client.last_request_bytes > whole  # the first request goes whole (plus its instructions)
    assert client.accepts_held is True and client.held == frozenset(tensor_digest(w) for w in initial)
    assert up1 > sum(w.nbytes for w in initial)  # every tensor trained: the whole update comes back
    # a classifier round on r1's weights: the hospital holds none of them yet (it holds `initial`)
    r2, _ = await client.fit(2, FitIns(weights=r1.weights, config=CLASSIFIER), TASK)
    assert client.last_request_bytes > whole
    # the next classifier round: the hospital holds r1's weights, of which only the head changed
    r3, up3 = await client.fit(3, FitIns(weights=r2.weights, config=CLASSIFIER), TASK)
    assert client.last_request_bytes < head_bytes + 4096 < whole // 10
    assert up3 < head_bytes + 4096
    for before, after, head in zip(r2.weights, r3.weights, heads):
        if head:
            assert np.abs(after - before).max() > 0
        else:
            assert after is before  # filled in from what was sent
    # the hospital resolved the references to the tensors it held: its model is r2's
    assert app.state.agent.held.keys() == {tensor_digest(w) for w in r2.weights}
    # evaluating r3's weights: only the head differs from what the hospital holds
    ev = await client.evaluate(3, r3.weights, TASK)
    assert ev.num_examples > 0 and client.last_request_bytes < head_bytes + 4096
    await client.http.aclose()


async def test_a_restarted_hospital_answers_412_and_gets_the_request_whole(setup):
    data_dir, initial = setup.data_dir, setup.initial
    app = _app(data_dir)
    client = _client(app)
    await client.fit(1, FitIns(weights=initial, config=CONFIG), TASK)
    assert client.held
    sent = []
    restarted = _app(data_dir)  # holds nothing

    async def record(request: httpx.Request) -> httpx.Response:
        sent.append(ModelExchange.from_bytes(request.content))
        return await httpx.ASGITransport(app=restarted).handle_async_request(request)

    await client.http.aclose()
    client.http = httpx.AsyncClient(transport=httpx.MockTransport(record))
    ev = await client.evaluate(1, initial, TASK)
    assert ev.num_examples > 0
    assert [len(m.weights) for m in sent] == [0, len(initial)]  # all referred to, refused, then sent whole
    assert len(sent[0].extra[HELD_KEY]) == len(initial) and HELD_KEY not in sent[1].extra
    assert restarted.state.agent.held.keys() == client.held == {tensor_digest(w) for w in initial}
    await client.http.aclose()


async def test_an_older_hospital_that_does_not_accept_references_gets_every_request_whole(setup):
    initial = setup.initial
    seen = []

    def old_hospital(req: httpx.Request) -> httpx.Response:
        msg = ModelExchange.from_bytes(req.content)
        seen.append((len(msg.weights), HELD_KEY in msg.extra))
        return httpx.Response(200, content=ModelExchange(weights=msg.weights, round=msg.round,
                                                         num_examples=3).to_bytes())

    async with httpx.AsyncClient(transport=httpx.MockTransport(old_hospital)) as http:
        client = HttpHospitalClient("hospital-1", "http://hospital-1", http)
        for rnd in (1, 2):
            await client.fit(rnd, FitIns(weights=initial, config=CONFIG), TASK)
    assert seen == [(len(initial), False), (len(initial), False)] and client.accepts_held is False


async def test_a_failed_request_leaves_nothing_assumed_held(setup):
    """A refused request (here: wrong shapes, 422) may or may not have replaced what the hospital
    holds: the client assumes nothing, so the next request goes whole."""
    initial = setup.initial
    client = _client(_app(setup.data_dir))
    await client.fit(1, FitIns(weights=initial, config=CONFIG), TASK)
    bad = [w[..., :1] if w.ndim else w for w in initial]
    with pytest.raises(HospitalError, match="HTTP 422"):
        await client.fit(2, FitIns(weights=bad, config=CONFIG), TASK)
    assert client.held == frozenset()
    await client.fit(3, FitIns(weights=initial, config=CONFIG), TASK)
    assert client.last_request_bytes > sum(w.nbytes for w in initial)
    await client.http.aclose()


async def test_references_in_a_request_are_checked_by_the_hospital(setup):
    from hemafed.schemas import FitInstructions

    initial = setup.initial
    app = _app(setup.data_dir)
    ins = {"instructions": FitInstructions(task=TASK, config=CONFIG).model_dump(mode="json")}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hospital-1") as http:
        body = ModelExchange(weights=initial[1:], round=1, extra={**ins, HELD_KEY: [[0, "0" * 64]]}).to_bytes()
        r = await http.post("/fit", content=body)
        assert r.status_code == 412
        assert r.json() == {"detail": "1 of the 1 tensors referred to are not held here (positions [0]): send them"}
        body = ModelExchange(weights=initial[1:], round=1, extra={**ins, HELD_KEY: [[0, "xyz"]]}).to_bytes()
        r = await http.post("/fit", content=body)
        assert r.status_code == 400 and "SHA-256 hex digest" in r.json()["detail"]
        assert app.state.agent.held == {}  # nothing accepted, nothing held


async def test_a_request_that_never_got_an_answer_leaves_nothing_assumed_held(setup):
    """A dropped connection (or a cancelled request): the hospital may or may not have replaced what
    it holds, so the client assumes nothing and sends the next request whole."""
    client = _client(_app(setup.data_dir))
    await client.fit(1, FitIns(weights=setup.initial, config=CONFIG), TASK)
    assert client.held and client.accepts_held
    working = client.http

    def drop(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection reset", request=request)

    client.http = httpx.AsyncClient(transport=httpx.MockTransport(drop))
    with pytest.raises(httpx.ConnectError):
        await client.evaluate(1, setup.initial, TASK)
    assert client.held == frozenset()
    await client.http.aclose()
    client.http = working
    ev = await client.evaluate(1, setup.initial, TASK)
    assert ev.num_examples > 0 and client.last_request_bytes > sum(w.nbytes for w in setup.initial)
    await client.http.aclose()


async def test_a_request_resent_whole_after_one_that_referred_to_held_tensors_is_not_trained_again(setup):
    """The hospital recognises a repeated /fit by what it asks for, not by its bytes: the same round
    sent once with references and once whole gets the remembered answer (a retry after a failed
    request goes whole: it must not train the round again)."""
    from hemafed.schemas import FitInstructions

    initial = setup.initial
    app = _app(setup.data_dir)
    agent = app.state.agent
    extra = {"instructions": FitInstructions(task=TASK, config=CONFIG).model_dump(mode="json"), "run_id": "run-a"}
    refs = [[i, tensor_digest(w)] for i, w in enumerate(initial)]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hospital-1") as http:
        first = await http.post("/fit", content=ModelExchange(weights=initial, round=1, extra=extra).to_bytes())
        assert first.status_code == 200, first.text
        referred = await http.post("/fit", content=ModelExchange(weights=[], round=1,
                                                                 extra={**extra, HELD_KEY: refs}).to_bytes())
        whole = await http.post("/fit", content=ModelExchange(weights=initial, round=1, extra=extra).to_bytes())
        assert referred.status_code == whole.status_code == 200
        assert referred.content == whole.content == first.content
        assert agent.replay.replayed == 2
        # the same round with other weights is other content: trained again
        other = await http.post("/fit", content=ModelExchange(weights=[w + 0.01 for w in initial], round=1,
                                                              extra=extra).to_bytes())
        assert other.status_code == 200 and other.content != first.content and agent.replay.replayed == 2
