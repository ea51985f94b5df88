"""The final report of a federated run (``FederatedServer._finish`` calls :func:`final_report`).

Writes into ``results/<run_id>/``:

* ``test_results.json``: the best model's test figures (:func:`hemafed.report.classification_metrics`:
  loss, accuracy, macro precision/recall/F1/specificity/AUC, per-class table, confusion matrix) plus
  ``timing`` (training wall time), ``communication`` (bytes of updates per round; trainable, total,
  exchanged and frozen parameter counts: frozen layers never travel), ``baseline`` (wall-time
  reduction against a centralized run, with ``BASELINE_RUN``), ``local_vs_federated`` (with
  ``LOCAL_BASELINE``) and ``final_model`` (the last round's model, when validation picked an
  earlier one: loss, accuracy, macro F1, recall per class; else ``null``);
* ``confusion_matrix.csv`` / ``.png``, ``per_class.csv``, ``per_image.csv``;
* ``local_vs_federated.csv`` (with ``LOCAL_BASELINE``): per hospital, its purely local model against
  the federated model, on the global test set and on the hospital's own validation split.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from hemafed_aggregator import modelops

if TYPE_CHECKING:  # pragma: no cover
    from hemafed_aggregator.server import FederatedServer
    from hemafed_aggregator.strategies.base import Weights

log = logging.getLogger("hemafed.aggregator")

LOCAL_VS_FEDERATED_COLUMNS = (
    "hospital", "status", "num_train", "num_val", "local_best_round", "local_fit_seconds",
    "local_val_accuracy", "federated_val_accuracy", "local_test_accuracy", "federated_test_accuracy",
    "local_test_macro_f1", "federated_test_macro_f1", "message",
)


def timing(server: FederatedServer, now: float | None = None) -> dict[str, Any]:
    """Training wall time: the round loop (fit + aggregation + validation of every round, as
    recorded in the rounds) and the run's wall time up to the end of training."""
    rounds = server.state.rounds
    durations = [r.get("duration_seconds") or 0.0 for r in rounds]
    training = float(sum(durations))
    return {
        "training_seconds": training,
        "rounds": len(rounds),
        "mean_round_seconds": training / len(rounds) if rounds else None,
        "wall_seconds": float((now or time.time()) - server.state.started_at),
    }


def communication(server: FederatedServer, initial: Weights, params: dict[str, int]) -> dict[str, Any]:
    """What travelled: the measured size of every update received (``update_bytes`` of each
    hospital in each round, safetensors bodies), of the requests that carried a model to it
    (``request_bytes``: /fit and /evaluate, less what the hospital held) and the model's parameter counts."""
    def by_round(key: str) -> list[int]:
        return [int(sum((h or {}).get(key) or 0 for h in r.get("hospitals", {}).values()))
                for r in server.state.rounds]

    per_round, requests = by_round("update_bytes"), by_round("request_bytes")
    total, trainable = int(params.get("total", 0)), int(params.get("trainable", 0))
    exchanged = int(sum(int(w.size) for w in initial))  # what travels (FedBN's local layers excluded)
    return {
        "update_bytes_per_round": per_round,
        "update_bytes_total": int(sum(per_round)),
        "update_bytes_mean_per_round": sum(per_round) / len(per_round) if per_round else None,
        "request_bytes_per_round": requests,
        "request_bytes_total": int(sum(requests)),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "non_trainable_parameters": total - trainable,
        "exchanged_parameters": exchanged,
        #: frozen layers (and local normalisation under FedBN) never travel
        "parameters_not_sent": max(total - exchanged, 0),
        "exchanged_bytes": int(sum(w.nbytes for w in initial)),
    }


def baseline_comparison(output_dir: Path, run_id: str, fed_seconds: float, fed_accuracy: float | None) -> dict:
    """Against the centralized run ``run_id`` (its ``test_results.json`` in ``output_dir``):
    ``time_reduction`` = 1 - federated / centralized training seconds (positive: federated faster)."""
    path = output_dir / run_id / "test_results.json"
    try:
        base = json.loads(path.read_text())
        central_seconds = float(base["timing"]["training_seconds"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("baseline run %s: no usable %s (%s)", run_id, path, exc)
        return {"run_id": run_id, "error": f"no usable test_results.json for run {run_id!r}: {exc}"}
    acc = base.get("accuracy")
    return {
        "run_id": run_id,
        "strategy": base.get("strategy", "centralized"),
        "training_seconds": central_seconds,
        "test_accuracy": acc,
        "federated_training_seconds": fed_seconds,
        "time_reduction": 1.0 - fed_seconds / central_seconds if central_seconds > 0 else None,
        "accuracy_difference": (fed_accuracy - acc) if fed_accuracy is not None and acc is not None else None,
    }


async def local_vs_federated(server: FederatedServer, best: Weights, initial: Weights, test_set,
                             federated: dict[str, Any]) -> list[dict[str, Any]]:
    """Each hospital trains a purely local model (``POST /local-baseline``) from the federation's
    initial weights for the federation's budget; both models are then scored on the global test
    set and on the hospital's own validation split."""
    from hemafed_aggregator.app import fit_config_of  # the federation's own local-training config

    task, cfg = server.task, server.run_cfg
    assert task is not None
    # the hospital alone trains its whole model (no FedBABU head freezing: that is a federated recipe)
    config = fit_config_of(cfg).model_copy(update={"frozen_classifier": False})
    timeout = cfg.round_timeout * cfg.rounds
    # each local pass at the rate of the matching federated round (LR_SCHEDULE)
    rates = [server.strategy.fit_config_for(r).learning_rate for r in range(1, cfg.rounds + 1)]

    async def one(client):
        fn = getattr(client, "local_baseline", None)
        if fn is None:
            raise RuntimeError("this hospital client cannot train a local baseline")
        # a pooled keep-alive connection may have been closed by the hospital while the aggregator
        # saved models and scored the test set: such a request never arrived, so it is sent again
        retrying = AsyncRetrying(stop=stop_after_attempt(3), wait=wait_exponential(multiplier=0.5, max=5),
                                 retry=retry_if_exception_type((httpx.RemoteProtocolError, httpx.ConnectError)),
                                 reraise=True)
        return await retrying(fn, cfg.rounds, initial, task, config, cfg.rounds, timeout=timeout,
                              learning_rates=rates)

    server.state.message = "training the hospitals' local baselines"
    local = await asyncio.gather(*(one(c) for c in server.clients), return_exceptions=True)
    fed_val = await asyncio.gather(*(c.evaluate(cfg.rounds, best, task) for c in server.clients),
                                   return_exceptions=True)
    rows = []
    for client, res, fv in zip(server.clients, local, fed_val):
        data = server.hospital_data.get(client.id, {})
        row: dict[str, Any] = {k: None for k in LOCAL_VS_FEDERATED_COLUMNS}
        row.update(hospital=client.id, status="ok", num_train=data.get("num_train"), num_val=data.get("num_val"),
                   federated_test_accuracy=federated.get("accuracy"),
                   federated_test_macro_f1=federated.get("macro_f1"), message="")
        if not isinstance(fv, BaseException):
            row["federated_val_accuracy"] = fv.accuracy
        if isinstance(res, BaseException):
            row.update(status="error", message=str(res)[:300] or type(res).__name__)
            log.warning("local baseline of %s failed: %s", client.id, row["message"])
        else:
            test = await asyncio.to_thread(modelops.evaluate_on_test, task, res.weights, server.test_dir,
                                           test_set=test_set, tta=cfg.tta)
            row.update(num_train=res.num_examples, local_best_round=int(res.metrics.get("best_round", 0)),
                       local_fit_seconds=res.metrics.get("fit_seconds"),
                       local_val_accuracy=res.metrics.get("local_val_accuracy"),
                       local_test_accuracy=test["accuracy"], local_test_macro_f1=test["macro_f1"])
            log.info("%s: local model test accuracy %.4f, federated %.4f", client.id, test["accuracy"],
                     federated.get("accuracy") or 0.0)
        rows.append(row)
    return rows


def write_local_vs_federated_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(LOCAL_VS_FEDERATED_COLUMNS))
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row.get(k) is None else row[k]) for k in LOCAL_VS_FEDERATED_COLUMNS})


async def final_model_figures(server: FederatedServer, test_set) -> dict[str, Any] | None:
    """The last round's model on the test set when global validation picked an earlier round
    (``None`` when the best round is the last): shown beside the picked model, never used to pick."""
    task, cfg = server.task, server.run_cfg
    assert task is not None
    if server.state.best_round is None or server.state.best_round == cfg.rounds:
        return None
    rep = await asyncio.to_thread(modelops.evaluate_on_test, task, server.weights, server.test_dir,
                                  test_set=test_set, tta=cfg.tta)
    log.info("test accuracy of the final model (round %d): %.4f", cfg.rounds, rep["accuracy"])
    return {"round": cfg.rounds, "loss": rep["loss"], "accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"],
            "recall": {c: v["recall"] for c, v in rep["per_class"].items()}}


async def final_report(server: FederatedServer, best: Weights) -> dict[str, Any] | None:
    """Score ``best`` on the test set and write the run's report files; ``None`` without a test set."""
    task, cfg, run_dir = server.task, server.run_cfg, server.run_dir
    assert task is not None
    train_time = timing(server)
    if server.test_dir is None or not server.test_dir.is_dir():
        log.warning("no test set at %s: final test evaluation skipped", server.test_dir)
        return None
    initial, params = await asyncio.to_thread(modelops.initial_weights, task)
    test_set = await asyncio.to_thread(modelops.load_test_set, task, server.test_dir)
    results = await asyncio.to_thread(
        modelops.evaluate_on_test, task, best, server.test_dir, run_dir, test_set=test_set,
        title=f"{cfg.run_id}: {server.strategy.name}, best round {server.state.best_round}", tta=cfg.tta)
    results.update(strategy=server.strategy.name, run_id=cfg.run_id, best_round=server.state.best_round,
                   timing=train_time, communication=communication(server, initial, params),
                   final_model=await final_model_figures(server, test_set))
    if cfg.baseline_run:
        results["baseline"] = baseline_comparison(run_dir.parent, cfg.baseline_run, train_time["training_seconds"],
                                                  results["accuracy"])
    if cfg.local_baseline:
        rows = await local_vs_federated(server, best, initial, test_set, results)
        write_local_vs_federated_csv(run_dir / "local_vs_federated.csv", rows)
        results["local_vs_federated"] = rows
        results["files"] = [*results.get("files", []), "local_vs_federated.csv"]
        server.state.message = ""
    (run_dir / "test_results.json").write_text(json.dumps(results, indent=2))
    log.info("test accuracy of the best model (round %s): %.4f", server.state.best_round, results["accuracy"])
    return results
