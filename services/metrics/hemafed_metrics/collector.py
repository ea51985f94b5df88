"""Prometheus collector reading the store at scrape time (nothing is kept in process).

Metrics (gauges):

* ``hemafed_run_rounds_completed{run_id}``, ``hemafed_run_rounds_total{run_id}``
* ``hemafed_run_status{run_id,status}``: 1 for the run's status, 0 for the others
* ``hemafed_run_global_val_accuracy{run_id,stat="median"|"mean"}`` and
  ``hemafed_run_global_val_loss{run_id}``: from the run's last recorded round
* ``hemafed_run_test_accuracy{run_id}``: once reported
* ``hemafed_service_cpu_percent{service}``, ``hemafed_service_rss_bytes{service}``,
  ``hemafed_service_gpu_util_percent{service}``, ``hemafed_service_gpu_memory_bytes{service}``,
  ``hemafed_service_last_sample_timestamp_seconds{service}``: each service's latest sample
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hemafed.schemas import RunStatus
from hemafed_metrics.store import MetricsStore


class StoreCollector(Collector):
    """Yields the metrics above from ``get_store()`` on each scrape."""

    def __init__(self, get_store: Callable[[], MetricsStore]) -> None:
        self._get_store = get_store

    def collect(self) -> Iterator[Metric]:
        store = self._get_store()
        done = GaugeMetricFamily(
            "hemafed_run_rounds_completed", "Rounds recorded for the run", labels=["run_id"]
        )
        total = GaugeMetricFamily("hemafed_run_rounds_total", "Rounds planned for the run", labels=["run_id"])
        status = GaugeMetricFamily(
            "hemafed_run_status", "1 for the run's current status, 0 otherwise", labels=["run_id", "status"]
        )
        acc = GaugeMetricFamily(
            "hemafed_run_global_val_accuracy",
            "Validation accuracy across hospitals in the last recorded round",
            labels=["run_id", "stat"],
        )
        loss = GaugeMetricFamily(
            "hemafed_run_global_val_loss",
            "Global validation loss in the last recorded round",
            labels=["run_id"],
        )
        test = GaugeMetricFamily(
            "hemafed_run_test_accuracy", "Final test accuracy of the run", labels=["run_id"]
        )
        for run in store.list_runs():
            done.add_metric([run.id], run.rounds_completed)
            total.add_metric([run.id], run.rounds_total)
            for s in RunStatus:
                status.add_metric([run.id, s.value], float(run.status == s))
            if run.test_accuracy is not None:
                test.add_metric([run.id], run.test_accuracy)
            last = store.last_round(run.id) if run.rounds_completed else None
            if last is not None:
                g = last.global_
                for stat, value in (("median", g.val_accuracy_median), ("mean", g.val_accuracy_mean)):
                    if value is not None:
                        acc.add_metric([run.id, stat], value)
                if g.val_loss is not None:
                    loss.add_metric([run.id], g.val_loss)
        yield from (done, total, status, acc, loss, test)

        fams = {
            "cpu_percent": GaugeMetricFamily(
                "hemafed_service_cpu_percent",
                "CPU % of the service process (100 = one core)",
                labels=["service"],
            ),
            "rss_bytes": GaugeMetricFamily(
                "hemafed_service_rss_bytes", "Resident memory of the service process", labels=["service"]
            ),
            "gpu_util": GaugeMetricFamily(
                "hemafed_service_gpu_util_percent", "GPU utilisation seen by the service", labels=["service"]
            ),
            "gpu_mem_bytes": GaugeMetricFamily(
                "hemafed_service_gpu_memory_bytes", "GPU memory of the service process", labels=["service"]
            ),
            "t": GaugeMetricFamily(
                "hemafed_service_last_sample_timestamp_seconds",
                "Unix time of the service's latest resource sample",
                labels=["service"],
            ),
        }
        for sample in store.latest_resources():
            for field, fam in fams.items():
                value = getattr(sample, field)
                if value is not None:
                    fam.add_metric([sample.service], value)
        yield from fams.values()
