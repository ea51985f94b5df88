"""The run report (hemafed.report) against hand-computed figures, and its files."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from hemafed.report import (
    REPORT_FILES,
    classification_metrics,
    classification_report,
    one_vs_rest_auc,
    per_source_metrics,
    source_of,
    tta_report,
    top_k,
    write_report_files,
)

CLASSES = ["a", "b", "c"]
# 5 test images; rows: probabilities of a, b, c
PROBS = np.array([
    [0.7, 0.2, 0.1],  # true a, predicted a
    [0.3, 0.6, 0.1],  # true a, predicted b
    [0.2, 0.5, 0.3],  # true b, predicted b
    [0.1, 0.4, 0.5],  # true b, predicted c
    [0.1, 0.1, 0.8],  # true c, predicted c
])
LABELS = np.array([0, 0, 1, 1, 2])


def test_every_figure_from_probabilities():
    rep = classification_metrics(PROBS, LABELS, CLASSES)
    assert rep["num_examples"] == 5
    assert rep["confusion_matrix"] == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert rep["classes"] == CLASSES
    assert rep["accuracy"] == pytest.approx(3 / 5)
    assert rep["loss"] == pytest.approx(-(math.log(0.7) + math.log(0.3) + math.log(0.5) + math.log(0.4)
                                          + math.log(0.8)) / 5)
    a, b, c = (rep["per_class"][k] for k in CLASSES)
    assert (a["precision"], a["recall"], a["support"]) == (pytest.approx(1.0), pytest.approx(0.5), 2)
    assert (b["precision"], b["recall"], b["support"]) == (pytest.approx(0.5), pytest.approx(0.5), 2)
    assert (c["precision"], c["recall"], c["support"]) == (pytest.approx(0.5), pytest.approx(1.0), 1)
    assert a["f1"] == pytest.approx(2 / 3) and b["f1"] == pytest.approx(0.5) and c["f1"] == pytest.approx(2 / 3)
    # specificity: of the images NOT of the class, the share not called that class
    assert a["specificity"] == pytest.approx(3 / 3)  # b, b, c: none called a
    assert b["specificity"] == pytest.approx(2 / 3)  # a, a, c: the second a called b
    assert c["specificity"] == pytest.approx(3 / 4)  # a, a, b, b: the second b called c
    # one-vs-rest AUC = share of (positive, negative) pairs ranked right
    assert a["auc"] == pytest.approx(1.0)  # a-scores of a: .7 .3; others: .2 .1 .1
    assert b["auc"] == pytest.approx(4 / 6)  # b-scores of b: .5 .4; others: .2 .6 .1
    assert c["auc"] == pytest.approx(1.0)  # .8 against .1 .1 .3 .5
    assert rep["macro_precision"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert rep["macro_recall"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert rep["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 2 / 3) / 3)
    assert rep["macro_specificity"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert rep["macro_auc"] == pytest.approx((1 + 4 / 6 + 1) / 3)


def test_a_class_absent_from_the_test_set():
    probs = np.hstack([PROBS * 0.9, np.full((5, 1), 0.1)])  # class d: predicted never, present never
    rep = classification_metrics(probs, LABELS, [*CLASSES, "d"])
    d = rep["per_class"]["d"]
    assert d == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "specificity": 1.0, "support": 0, "auc": None}
    # macro averages run over the classes present: the same as without d
    assert rep["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 2 / 3) / 3)
    assert rep["macro_auc"] == pytest.approx((1 + 4 / 6 + 1) / 3)
    assert rep["confusion_matrix"][3] == [0, 0, 0, 0]


def test_auc_ties_count_one_half_and_match_scikit_learn():
    assert one_vs_rest_auc([0.5, 0.5, 0.2], [True, False, False]) == pytest.approx(0.75)
    assert one_vs_rest_auc([0.1, 0.2], [True, True]) is None  # no negatives
    assert one_vs_rest_auc([0.1, 0.2], [False, False]) is None
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200) / 4  # many ties
    pos = rng.random(200) < 0.3
    assert one_vs_rest_auc(scores, pos) == pytest.approx(roc_auc_score(pos, scores))


def test_classification_report_from_a_confusion_matrix():
    rep = classification_report([[8, 2, 0], [1, 3, 0], [0, 0, 0]], ["a", "b", "c"])
    assert rep["accuracy"] == pytest.approx(11 / 14)
    assert rep["per_class"]["a"]["specificity"] == pytest.approx(3 / 4)
    assert rep["macro_specificity"] == pytest.approx((3 / 4 + 8 / 10) / 2)
    with pytest.raises(ValueError, match="3x3"):
        classification_report([[1, 2], [3, 4]], ["a", "b", "c"])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        classification_metrics(PROBS[:, :2], LABELS, CLASSES)
    with pytest.raises(ValueError, match="labels"):
        classification_metrics(PROBS, LABELS[:4], CLASSES)
    with pytest.raises(ValueError, match="integers in"):
        classification_metrics(PROBS, np.array([0, 0, 1, 1, 3]), CLASSES)
    with pytest.raises(ValueError, match="finite"):
        classification_metrics(np.where(PROBS > 0.75, np.nan, PROBS), LABELS, CLASSES)


def test_empty_test_set():
    rep = classification_metrics(np.zeros((0, 3)), np.zeros(0, np.int64), CLASSES)
    assert rep["num_examples"] == 0 and rep["accuracy"] == 0.0 and rep["loss"] == 0.0
    assert rep["macro_auc"] is None and rep["macro_f1"] == 0.0


def test_tta_report_scores_the_mean_and_keeps_the_single_view_figures():
    # a second view that fixes image 2 (true a) and breaks image 4 (true b)
    other = np.array([
        [0.7, 0.2, 0.1],
        [0.9, 0.05, 0.05],
        [0.2, 0.5, 0.3],
        [0.1, 0.8, 0.1],
        [0.6, 0.1, 0.3],
    ])
    mean, entry = tta_report([PROBS, other], LABELS, CLASSES)
    np.testing.assert_allclose(mean, (PROBS + other) / 2)
    # mean: image 2 -> a (0.6 vs 0.325), image 4 -> b (0.6 vs 0.3), image 5 -> c (0.55 vs 0.35): 5 of 5
    assert classification_metrics(mean, LABELS, CLASSES)["accuracy"] == 1.0
    plain = classification_metrics(PROBS, LABELS, CLASSES)
    assert entry == {"views": 2, "kind": entry["kind"],
                     "single_view": {"accuracy": 0.6, "macro_f1": plain["macro_f1"], "loss": plain["loss"]}}
    assert "dihedral" in entry["kind"]
    with pytest.raises(ValueError, match="no views"):
        tta_report([], LABELS, CLASSES)


def test_source_of_reads_the_prefix_the_split_writes():
    assert source_of("basophil/bccd__basophil__BloodImage_00008_1.jpg") == "bccd"
    assert source_of("pbc__00017.png") == "pbc"
    assert source_of("C:\\test\\ig\\pbc__ig__IG_1.jpg") == "pbc"
    for name in ("basophil/A-00000.png", "ig/__x.png", "ig/pbc__", "pbc__/x.png"):
        assert source_of(name) is None, name


def test_per_source_metrics_split_the_test_set_by_source():
    # PBC: true a, b, c predicted a, b, c (all right); BCCD: true a, a, b predicted b, a, b
    files = ["a/pbc__a__1.jpg", "b/pbc__b__2.jpg", "c/pbc__c__3.jpg",
             "a/bccd__a__4.jpg", "a/bccd__a__5.jpg", "b/bccd__b__6.jpg"]
    out = per_source_metrics(files, [0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 0, 1], CLASSES)
    assert list(out) == ["bccd", "pbc"]
    assert out["pbc"] == {"num_examples": 3, "accuracy": 1.0, "macro_recall": 1.0, "macro_f1": 1.0}
    # BCCD: a recall 1/2, b recall 1; precision a 1, b 1/2 -> F1 a 2/3, b 2/3; c has no images there
    bccd = out["bccd"]
    assert bccd["num_examples"] == 3 and bccd["accuracy"] == pytest.approx(2 / 3)
    assert bccd["macro_recall"] == pytest.approx(0.75) and bccd["macro_f1"] == pytest.approx(2 / 3)
    # the per-source counts add up to the whole test set's
    overall = classification_report(np.array([[2, 1, 0], [0, 2, 0], [0, 0, 1]]), CLASSES)["accuracy"]
    assert sum(v["accuracy"] * v["num_examples"] for v in out.values()) / 6 == pytest.approx(overall)


def test_per_source_metrics_without_a_prefix_or_with_bad_input():
    assert per_source_metrics(["a/x.png", "b/pbc__y.png"], [0, 1], [0, 1], CLASSES) is None
    assert per_source_metrics([], [], [], CLASSES) is None
    with pytest.raises(ValueError, match="2 file names, 1 labels"):
        per_source_metrics(["pbc__1.png", "pbc__2.png"], [0], [0], CLASSES)
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 3\)"):
        per_source_metrics(["pbc__1.png"], [0], [3], CLASSES)


def test_top_k_orders_and_breaks_ties_by_class_index():
    idx, scores = top_k(np.array([[0.2, 0.5, 0.3], [0.4, 0.4, 0.2]]), 2)
    assert idx.tolist() == [[1, 2], [0, 1]]
    assert scores.tolist() == [[0.5, 0.3], [0.4, 0.4]]


def _read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_report_files(tmp_path):
    rep = classification_metrics(PROBS, LABELS, CLASSES)
    files = ["a/x1.png", "a/x2.png", "b/y1.png", "b/y2.png", "c/z1.png"]
    written = write_report_files(tmp_path, rep, PROBS, LABELS, files, title="t")
    assert written == list(REPORT_FILES)
    assert _read(tmp_path / "confusion_matrix.csv") == [
        ["true\\predicted", "a", "b", "c"], ["a", "1", "1", "0"], ["b", "0", "1", "1"], ["c", "0", "0", "1"]]
    per_image = _read(tmp_path / "per_image.csv")
    assert per_image[0] == ["file", "top1", "top1_score", "top2", "top2_score", "true"]
    assert per_image[1:] == [
        ["a/x1.png", "a", "0.700000", "b", "0.200000", "a"],
        ["a/x2.png", "b", "0.600000", "a", "0.300000", "a"],
        ["b/y1.png", "b", "0.500000", "c", "0.300000", "b"],
        ["b/y2.png", "c", "0.500000", "b", "0.400000", "b"],
        ["c/z1.png", "c", "0.800000", "a", "0.100000", "c"],  # tie b/a at .1: the lower index first
    ]
    per_class = _read(tmp_path / "per_class.csv")
    assert per_class[0] == ["class", "precision", "recall", "f1", "specificity", "auc", "support"]
    assert per_class[2] == ["b", "0.500000", "0.500000", "0.500000", "0.666667", "0.666667", "2"]
    png = (tmp_path / "confusion_matrix.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    with pytest.raises(ValueError, match="4 file names for 5 images"):
        write_report_files(tmp_path, rep, PROBS, LABELS, files[:4])


# --------------------------------------------------------------------------- a federated run's report

import json  # noqa: E402

import httpx  # noqa: E402

from hemafed.data.synthetic import CLASSES as PBC_CLASSES  # noqa: E402
from hemafed.exchange import ModelExchange  # noqa: E402
from hemafed.schemas import FitConfig, LocalBaselineInstructions, TaskSpec  # noqa: E402
from hemafed_aggregator.app import build_server  # noqa: E402
from hemafed_aggregator.runreport import LOCAL_VS_FEDERATED_COLUMNS  # noqa: E402
from hemafed_aggregator.settings import AggregatorSettings, RunConfig  # noqa: E402
from hemafed_hospital.app import create_app as hospital_app  # noqa: E402
from hemafed_hospital.settings import HospitalSettings  # noqa: E402
from hemafed_metrics.app import create_app as metrics_app  # noqa: E402
from hemafed_metrics.store import InMemoryStore  # noqa: E402
from tests.unit.helpers import RoutingTransport, synthetic_folder  # noqa: E402

SIZE = 16
HOSPITALS = ["hospital-1", "hospital-2"]


@pytest.fixture(scope="module")
def fed_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fedreport")
    out = {h: synthetic_folder(root / h, n_per_class=4, size=SIZE, seed=i) for i, h in enumerate(HOSPITALS)}
    out["test"] = synthetic_folder(root / "test", n_per_class=2, size=SIZE, seed=7)
    return out


@pytest.mark.anyio
async def test_federated_report_with_local_baselines_and_a_centralized_baseline(fed_folders, tmp_path):
    results = tmp_path / "results"
    (results / "central-x").mkdir(parents=True)
    (results / "central-x" / "test_results.json").write_text(json.dumps(
        {"strategy": "centralized", "accuracy": 0.5, "timing": {"training_seconds": 1000.0}}))
    store = InMemoryStore()
    apps = {"metrics": metrics_app(store=store)}
    for h in HOSPITALS:
        apps[h] = hospital_app(HospitalSettings(hospital_id=h, data_dir=fed_folders[h]), report_resources=False)
    http = httpx.AsyncClient(transport=RoutingTransport(apps))
    settings = AggregatorSettings(hospitals={h: f"http://{h}" for h in HOSPITALS}, metrics_url="http://metrics",
                                  output_dir=results, test_dir=fed_folders["test"])
    cfg = RunConfig(run_id="fedrep", rounds=1, image_size=SIZE, local_epochs=1, batch_size=16, wait_for_clients=2,
                    round_timeout=120, local_baseline=True, baseline_run="central-x")
    state = await build_server(settings, cfg, http).run()
    assert state.status == "finished", state.message
    out = results / "fedrep"
    test = json.loads((out / "test_results.json").read_text())
    assert state.test_results == test
    assert set(test["files"]) == {*REPORT_FILES, "local_vs_federated.csv"}
    assert all((out / f).is_file() for f in test["files"])
    # stable keys (integration tests and the dashboard read them) and the new ones
    assert {"accuracy", "loss", "macro_f1", "classes", "confusion_matrix", "num_examples", "per_class",
            "macro_precision", "macro_recall", "macro_specificity", "macro_auc"} <= set(test)
    assert test["num_examples"] == 16 and test["strategy"] == "fedavg" and test["best_round"] == state.best_round
    rounds = store.list_rounds("fedrep")
    com = test["communication"]
    assert com["update_bytes_per_round"] == [sum(m.update_bytes for m in r.hospitals.values()) for r in rounds]
    assert com["update_bytes_total"] == sum(com["update_bytes_per_round"]) > 2 * com["exchanged_bytes"]
    assert com["request_bytes_per_round"] == [sum(m.request_bytes for m in r.hospitals.values()) for r in rounds]
    assert all(m.request_bytes > com["exchanged_bytes"] for r in rounds for m in r.hospitals.values())
    params = store.get_run("fedrep").config["params"]
    assert com["exchanged_parameters"] == params["exchanged"] == params["trainable"] == com["trainable_parameters"]
    assert com["total_parameters"] == params["total"] == com["exchanged_parameters"]  # cnn: nothing frozen
    assert com["non_trainable_parameters"] == com["parameters_not_sent"] == 0
    assert com["exchanged_bytes"] == 4 * com["exchanged_parameters"]
    tm = test["timing"]
    assert tm["rounds"] == 1
    assert tm["training_seconds"] == pytest.approx(sum(r.duration_seconds for r in rounds))
    assert tm["wall_seconds"] >= tm["training_seconds"] > 0
    base = test["baseline"]
    assert base["run_id"] == "central-x" and base["training_seconds"] == 1000.0
    assert base["time_reduction"] == pytest.approx(1 - tm["training_seconds"] / 1000.0)
    assert base["accuracy_difference"] == pytest.approx(test["accuracy"] - 0.5)
    rows = test["local_vs_federated"]
    assert [r["hospital"] for r in rows] == HOSPITALS
    for r in rows:
        assert r["status"] == "ok", r
        assert r["num_train"] == 24 and r["local_best_round"] == 1  # 32 images less 8 for validation
        for k in ("local_val_accuracy", "federated_val_accuracy", "local_test_accuracy", "local_test_macro_f1"):
            assert 0.0 <= r[k] <= 1.0, (k, r)
        assert r["federated_test_accuracy"] == test["accuracy"]
        assert r["local_fit_seconds"] > 0
    with open(out / "local_vs_federated.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(LOCAL_VS_FEDERATED_COLUMNS) and [t["hospital"] for t in table] == HOSPITALS
    assert float(table[0]["local_test_accuracy"]) == pytest.approx(rows[0]["local_test_accuracy"])
    assert store.get_run("fedrep").test_results["local_vs_federated"] == rows
    await http.aclose()


def test_baseline_comparison(tmp_path):
    from hemafed_aggregator.runreport import baseline_comparison

    (tmp_path / "c1").mkdir()
    (tmp_path / "c1" / "test_results.json").write_text(json.dumps(
        {"strategy": "centralized", "accuracy": 0.9, "timing": {"training_seconds": 200.0}}))
    got = baseline_comparison(tmp_path, "c1", 150.0, 0.85)
    assert got == {"run_id": "c1", "strategy": "centralized", "training_seconds": 200.0, "test_accuracy": 0.9,
                   "federated_training_seconds": 150.0, "time_reduction": pytest.approx(0.25),
                   "accuracy_difference": pytest.approx(-0.05)}
    missing = baseline_comparison(tmp_path, "c2", 150.0, 0.85)
    assert missing["run_id"] == "c2" and "no usable test_results.json for run 'c2'" in missing["error"]
    (tmp_path / "c3").mkdir()
    (tmp_path / "c3" / "test_results.json").write_text('{"accuracy": 0.9}')  # no timing
    assert "error" in baseline_comparison(tmp_path, "c3", 150.0, 0.85)


@pytest.mark.anyio
async def test_local_baseline_endpoint(fed_folders):
    from hemafed.models import build_model, get_exchanged

    task = TaskSpec(model="cnn", image_size=SIZE, classes=list(PBC_CLASSES), seed=1)
    initial = get_exchanged(build_model("cnn", len(PBC_CLASSES), SIZE, seed=1))
    app = hospital_app(HospitalSettings(hospital_id="hospital-1", data_dir=fed_folders["hospital-1"]),
                       report_resources=False)

    def body(weights=initial, **ins):
        extra = {"instructions": ins or LocalBaselineInstructions(
            task=task, config=FitConfig(local_epochs=1, batch_size=16, proximal_mu=0.5), rounds=2)
            .model_dump(mode="json")}
        return ModelExchange(weights=weights, round=3, extra=extra).to_bytes()

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://h") as c:
        r = await c.post("/local-baseline", content=body())
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/octet-stream"
        msg = ModelExchange.from_bytes(r.content)
        assert msg.round == 3 and msg.num_examples == 24
        assert set(msg.metrics) == {"train_loss", "train_accuracy", "fit_seconds", "best_round",
                                    "local_val_accuracy", "local_val_loss", "num_val"}
        assert msg.metrics["best_round"] in (1.0, 2.0) and msg.metrics["num_val"] == 8
        assert 0 <= msg.metrics["local_val_accuracy"] <= 1 and msg.metrics["fit_seconds"] > 0
        assert msg.extra == {"hospital_id": "hospital-1"}
        assert [w.shape for w in msg.weights] == [w.shape for w in initial]
        assert any(not np.array_equal(a, b) for a, b in zip(msg.weights, initial))  # it trained
        # refusals: not an exchange, bad instructions, wrong-shape weights
        bad = await c.post("/local-baseline", content=b"nope")
        assert bad.status_code == 400 and "safetensors" in bad.json()["detail"]
        bad = await c.post("/local-baseline", content=body(task=task.model_dump(), rounds=0))
        assert bad.status_code == 422 and "bad instructions" in bad.json()["detail"]
        bad = await c.post("/local-baseline", content=body(weights=initial[:-1]))
        assert bad.status_code == 422 and "global weights rejected" in bad.json()["detail"]
        bad = await c.post("/local-baseline", content=body(task=task.model_dump(), config={}, rounds=2,
                                                            learning_rates=[1e-3]))
        assert bad.status_code == 422 and "learning_rates has 1 entries for 2 passes" in bad.json()["detail"]
        # a schedule's rates reach the passes: a zero-ish rate on both passes leaves the weights almost as sent
        r = await c.post("/local-baseline", content=body(task=task.model_dump(), config={"local_epochs": 1,
                         "batch_size": 16}, rounds=2, learning_rates=[1e-9, 1e-9]))
        assert r.status_code == 200, r.text
        still = ModelExchange.from_bytes(r.content).weights
        assert max(float(np.abs(a - b).max()) for a, b in zip(still, initial)) < 1e-5


def test_communication_figures_frozen_layers_never_travel():
    from types import SimpleNamespace

    from hemafed_aggregator import modelops
    from hemafed_aggregator.runreport import communication

    task = TaskSpec(model="mobilenetv2", image_size=32, classes=["a", "b", "c"], trainable_fraction=0.0)
    initial, params = modelops.initial_weights(task)
    rounds = [{"hospitals": {"h1": {"update_bytes": 100, "request_bytes": 400}, "h2": {"update_bytes": 250},
                             "h3": {"status": "timeout"}}},
              {"hospitals": {"h1": {"update_bytes": 120, "request_bytes": 30}}}]
    com = communication(SimpleNamespace(state=SimpleNamespace(rounds=rounds)), initial, params)
    assert com["update_bytes_per_round"] == [350, 120] and com["update_bytes_total"] == 470
    assert com["request_bytes_per_round"] == [400, 30] and com["request_bytes_total"] == 430
    assert com["update_bytes_mean_per_round"] == 235
    # frozen backbone: only the head (BatchNorm + Dense) travels
    assert com["exchanged_parameters"] == sum(w.size for w in initial) == params["exchanged"]
    assert com["exchanged_parameters"] < 10_000 < com["total_parameters"] == params["total"]
    assert com["parameters_not_sent"] == com["total_parameters"] - com["exchanged_parameters"]
    assert com["trainable_parameters"] == params["trainable"] < com["exchanged_parameters"]  # BN statistics travel
    assert com["exchanged_bytes"] == sum(w.nbytes for w in initial)


@pytest.mark.anyio
async def test_local_baselines_retry_a_dropped_connection_and_report_failures(fed_folders):
    from types import SimpleNamespace

    from hemafed_aggregator import modelops
    from hemafed_aggregator.runreport import local_vs_federated
    from hemafed_aggregator.strategies.base import EvaluateRes, FitRes

    task = TaskSpec(model="cnn", image_size=SIZE, classes=list(PBC_CLASSES), seed=0)
    initial, _ = modelops.initial_weights(task)

    class Client:
        def __init__(self, hid, failures, exc):
            self.id, self.failures, self.exc, self.calls = hid, failures, exc, 0

        async def local_baseline(self, rnd, weights, task, config, rounds, timeout=None, learning_rates=None):
            self.calls += 1
            assert (rnd, rounds, config.local_epochs) == (3, 3, 2)
            # pass r at round r's rate of the cosine schedule: 1e-3 * (1 + cos(pi (r-1)/3)) / 2
            assert learning_rates == pytest.approx([1e-3, 0.75e-3, 0.25e-3])
            if self.calls <= self.failures:
                raise self.exc
            return FitRes(hospital_id=self.id, weights=weights, num_examples=30,
                          metrics={"best_round": 2.0, "fit_seconds": 1.5, "local_val_accuracy": 0.25})

        async def evaluate(self, rnd, weights, task):
            return EvaluateRes(hospital_id=self.id, loss=1.0, accuracy=0.75, num_examples=8)

    flaky = Client("hospital-1", 1, httpx.RemoteProtocolError("Server disconnected without sending a response."))
    broken = Client("hospital-2", 5, RuntimeError("HTTP 409: busy"))
    from hemafed_aggregator.strategies import FedAvg

    strategy = FedAvg(lr_schedule="cosine", total_rounds=3)
    server = SimpleNamespace(task=task, run_cfg=RunConfig(rounds=3, local_epochs=2, round_timeout=10),
                             strategy=strategy,
                             clients=[flaky, broken], hospital_data={"hospital-2": {"num_train": 7, "num_val": 2}},
                             test_dir=fed_folders["test"], state=SimpleNamespace(message=""))
    test_set = modelops.load_test_set(task, fed_folders["test"])
    rows = await local_vs_federated(server, initial, initial, test_set, {"accuracy": 0.6, "macro_f1": 0.5})
    assert flaky.calls == 2 and broken.calls == 1  # only a dropped connection is retried
    ok, err = rows
    same = modelops.evaluate_on_test(task, initial, fed_folders["test"], test_set=test_set)
    assert ok == {"hospital": "hospital-1", "status": "ok", "num_train": 30, "num_val": None, "local_best_round": 2,
                  "local_fit_seconds": 1.5, "local_val_accuracy": 0.25, "federated_val_accuracy": 0.75,
                  "local_test_accuracy": same["accuracy"], "federated_test_accuracy": 0.6,
                  "local_test_macro_f1": same["macro_f1"], "federated_test_macro_f1": 0.5, "message": ""}
    assert err["status"] == "error" and err["message"] == "HTTP 409: busy"
    assert (err["num_train"], err["num_val"], err["federated_val_accuracy"]) == (7, 2, 0.75)
    assert err["local_test_accuracy"] is None and err["federated_test_accuracy"] == 0.6


def test_test_evaluation_with_and_without_test_time_augmentation(fed_folders):
    from hemafed_aggregator import modelops

    task = TaskSpec(model="cnn", image_size=SIZE, classes=list(PBC_CLASSES), seed=0)
    initial, _ = modelops.initial_weights(task)
    test_set = modelops.load_test_set(task, fed_folders["test"])
    plain = modelops.evaluate_on_test(task, initial, fed_folders["test"], test_set=test_set)
    assert plain["test_time_augmentation"] is None
    tta = modelops.evaluate_on_test(task, initial, fed_folders["test"], test_set=test_set, tta=True)
    entry = tta["test_time_augmentation"]
    assert entry["views"] == 8
    assert entry["single_view"] == {"accuracy": plain["accuracy"], "macro_f1": plain["macro_f1"],
                                    "loss": pytest.approx(plain["loss"])}
    probs = modelops.predict(task, initial, test_set.images, tta=True)
    again = classification_metrics(probs, test_set.labels, task.classes)
    assert tta["accuracy"] == again["accuracy"] and tta["loss"] == pytest.approx(again["loss"])
    assert tta["num_examples"] == plain["num_examples"] == 16
    assert plain["per_source"] is None  # the synthetic test images carry no source prefix


def test_test_evaluation_reports_each_source(fed_folders, tmp_path):
    from hemafed_aggregator import modelops

    test_dir = tmp_path / "test"
    for i, f in enumerate(sorted(fed_folders["test"].rglob("*.png"))):
        (test_dir / f.parent.name).mkdir(parents=True, exist_ok=True)
        source = "pbc" if i % 4 else "bccd"
        (test_dir / f.parent.name / f"{source}__{f.parent.name}__{f.name}").write_bytes(f.read_bytes())
    task = TaskSpec(model="cnn", image_size=SIZE, classes=list(PBC_CLASSES), seed=0)
    initial, _ = modelops.initial_weights(task)
    rep = modelops.evaluate_on_test(task, initial, test_dir, out_dir=tmp_path / "out")
    by_source = rep["per_source"]
    assert sorted(by_source) == ["bccd", "pbc"]
    assert by_source["bccd"]["num_examples"] == 4 and by_source["pbc"]["num_examples"] == 12
    right = sum(v["accuracy"] * v["num_examples"] for v in by_source.values())
    assert right == pytest.approx(rep["accuracy"] * 16)
    with (tmp_path / "out" / "per_image.csv").open() as f:
        rows = list(csv.DictReader(f))
    bccd = [r for r in rows if "/bccd__" in r["file"] or r["file"].startswith("bccd__")]
    assert len(bccd) == 4
    assert by_source["bccd"]["accuracy"] == pytest.approx(sum(r["top1"] == r["true"] for r in bccd) / 4)
