"""The experiment runner (tools/experiment.py) without Docker: config validation, grid expansion,
RUN_ID naming, commands, result collection from results dirs, tables and plot, skip-existing and
failed runs (the command runner is injected)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from tools import experiment as ex

ROOT = Path(__file__).resolve().parents[2]


def cfg(**over):
    raw = {"name": "exp", "base": {"dataset": "synthetic", "rounds": 2, "clients": 3}, **over}
    return ex.parse_config(raw)


# --------------------------------------------------------------------------- config validation


def test_minimal_config_gets_defaults():
    c = ex.parse_config({"name": "e1"})
    assert c.engine == "stack" and c.seeds == [0] and c.base == {} and c.scenarios == []
    assert c.run_timeout_minutes == 120
    runs = ex.expand(c)
    assert [(r.run_id, r.scenario, r.seed, r.kind, r.engine, r.settings) for r in runs] == [
        ("e1-base-0", "base", 0, "federated", "stack", {})]


@pytest.mark.parametrize("raw, needle", [
    ({"name": "e", "grdi": {"rounds": [1]}}, "grdi: Extra inputs are not permitted"),
    ({"name": "e", "base": {"clientz": 3}}, "base: unknown setting 'clientz'"),
    ({"name": "e", "grid": {"lerning_rate": [0.1]}}, "grid: unknown setting 'lerning_rate'"),
    ({"name": "e", "sweep": {"epochz": [1]}}, "sweep: unknown setting 'epochz'"),
    ({"name": "e", "base": {"seed": 1}}, "base.seed: set by the runner (use `seeds: [...]`"),
    ({"name": "e", "base": {"run_id": "x"}}, "base.run_id: set by the runner"),
    ({"name": "e", "base": {"clients": "many"}}, "base.clients: 'many' is not valid"),
    ({"name": "e", "base": {"rounds": 2.5}}, "base.rounds: 2.5 is not valid"),
    ({"name": "e", "base": {"strategy_params": "x"}}, "base.strategy_params: must be a mapping"),
    ({"name": "e", "base": {"concurrency": 4}}, "base.concurrency: only for engine: simulation"),
    ({"name": "e", "scenarios": [{"name": "a", "settings": {"epochs": 4}}]}, "a].settings.epochs: only for kind"),
    ({"name": "e", "grid": {"rounds": []}}, "grid.rounds: give at least one value"),
    ({"name": "e", "grid": {"rounds": [1]}, "sweep": {"rounds": [2]}}, "an axis is in both grid and sweep: rounds"),
    ({"name": "e", "seeds": [1, 1]}, "seeds: seeds must be unique"),
    ({"name": "e", "seeds": [0], "repeats": 2}, "give either seeds or repeats"),
    ({"name": "e", "engine": "k8s"}, "engine: Input should be 'stack' or 'simulation'"),
    ({"name": "bad name"}, "name: String should match pattern"),
    ({"name": "e", "scenarios": [{"name": "a"}, {"name": "a"}]}, "scenario names must be unique: a"),
    ({"name": "e", "scenarios": [{"name": "a", "setings": {}}]}, "scenarios.0.setings: Extra inputs"),
    ({"name": "e", "scenarios": [{"name": "a", "kind": "central", "engine": "simulation"}]},
     "kind central runs on engine stack"),
    ({"name": "e", "grid": {"strategy": {"bad label": "fedavg"}}}, "value name 'bad label' must match"),
])
def test_bad_configs_are_refused_with_a_clear_message(raw, needle):
    with pytest.raises(ex.ConfigError) as info:
        ex.parse_config(raw, "exp.yaml")
    assert str(info.value).startswith("exp.yaml: ")
    assert needle in str(info.value), str(info.value)


@pytest.mark.parametrize("base, needle", [
    ({"rounds": 0}, "base.rounds: 0 is not valid (Input should be greater than or equal to 1)"),
    ({"schedule": "daily"}, "base.schedule: 'daily' is not valid"),
    ({"lr_schedule": "linear"}, "base.lr_schedule: 'linear' is not valid"),
])
def test_constraints_of_the_run_config_apply(base, needle):
    with pytest.raises(ex.ConfigError, match=re.escape(needle)):
        ex.parse_config({"name": "e", "base": base})


def test_the_aggregators_own_validators_run_before_anything_runs():
    c = ex.parse_config({"name": "e", "scenarios": [{"name": "ok"}, {"name": "bad", "settings": {
        "participation": "sometimes"}}]})
    with pytest.raises(ex.ConfigError, match=r"^scenario bad: participation: .*sometimes"):
        ex.expand(c)


@pytest.mark.parametrize("settings, needle", [
    ({"strategy": "fedavgm", "strategy_params": {"momentum": 0.5}}, "unexpected keyword argument 'momentum'"),
    ({"strategy": "fedprox", "strategy_params": {"mu": -1}}, "mu"),
])
def test_the_strategy_is_built_as_the_aggregator_builds_it(settings, needle):
    c = ex.parse_config({"name": "e", "scenarios": [{"name": "bad", "settings": settings}]})
    with pytest.raises(ex.ConfigError, match=r"^scenario bad: .*" + re.escape(needle)):
        ex.expand(c)
    ok = ex.parse_config({"name": "e", "scenarios": [{"name": "ok", "settings": {
        "strategy": "fedavgm", "strategy_params": {"server_momentum": 0.5}, "lr_schedule": "cosine"}}]})
    assert [r.settings["strategy_params"] for r in ex.expand(ok)] == [{"server_momentum": 0.5}]


def test_top_level_must_be_a_mapping_and_the_file_must_exist(tmp_path):
    with pytest.raises(ex.ConfigError, match="the top level must be a mapping"):
        ex.parse_config([1, 2], "x.yaml")
    with pytest.raises(ex.ConfigError, match="no such config file"):
        ex.load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ex.ConfigError, match="not valid YAML"):
        ex.load_config(bad)


def test_every_run_config_field_is_a_known_setting():
    from hemafed_aggregator.settings import RunConfig

    known = ex.known_settings()
    for name in RunConfig.model_fields:
        if name not in ("run_id", "seed", "split", "dataset"):
            assert name in known, name
    assert {"clients", "split", "dataset", "alpha", "source_proportions", "mapping"} <= set(known)


def test_repeats_means_seeds_0_to_n_minus_1():
    assert cfg(repeats=3).seeds == [0, 1, 2]


# --------------------------------------------------------------------------- expansion and naming


def test_grid_is_the_cartesian_product_in_order():
    runs = ex.expand(cfg(grid={"learning_rate": [0.001, 0.01], "local_epochs": [1, 2]}, seeds=[0, 7]))
    assert [r.run_id for r in runs] == [
        "exp-lr0.001-e1-0", "exp-lr0.001-e1-7", "exp-lr0.001-e2-0", "exp-lr0.001-e2-7",
        "exp-lr0.01-e1-0", "exp-lr0.01-e1-7", "exp-lr0.01-e2-0", "exp-lr0.01-e2-7"]
    r = runs[2]
    assert r.scenario == "lr0.001-e2" and r.seed == 0
    assert r.settings == {"dataset": "synthetic", "rounds": 2, "clients": 3, "learning_rate": 0.001,
                          "local_epochs": 2}
    assert r.varied == {"learning_rate": 0.001, "local_epochs": 2}


def test_scenarios_times_grid_and_scenario_settings_override_base():
    c = cfg(scenarios=[{"name": "iid", "settings": {"split": "iid"}},
                       {"name": "skew", "settings": {"split": "noniid", "clients": 5}}],
            grid={"strategy": ["fedavg", "fedprox"]})
    runs = ex.expand(c)
    assert [r.run_id for r in runs] == ["exp-iid-fedavg-0", "exp-iid-fedprox-0", "exp-skew-fedavg-0",
                                        "exp-skew-fedprox-0"]
    assert runs[3].settings == {"dataset": "synthetic", "rounds": 2, "clients": 5, "split": "noniid",
                                "strategy": "fedprox"}
    assert runs[3].varied == {"clients": 5, "split": "noniid", "strategy": "fedprox"}


def test_sweep_varies_one_axis_at_a_time_and_drops_duplicates():
    c = cfg(base={"clients": 100, "learning_rate": 0.001, "batch_size": 32},
            sweep={"clients": [10, 100], "learning_rate": [0.001, 0.01], "batch_size": [16]})
    runs = ex.expand(c)
    # the base point, then each value of each axis; clients=100 and lr=0.001 equal the base point
    assert [r.scenario for r in runs] == ["base", "c10", "lr0.01", "b16"]
    assert runs[0].varied == {} and runs[1].settings["clients"] == 10 and runs[2].settings["clients"] == 100
    assert runs[3].varied == {"batch_size": 16}


def test_named_axis_values_name_the_scenarios():
    c = cfg(grid={"strategy_params": {"slr1": {"server_lr": 1.0}, "slr05": {"server_lr": 0.5}},
                  "augment": [True, False]})
    runs = ex.expand(c)
    assert [r.scenario for r in runs] == ["slr1-augmenton", "slr1-augmentoff", "slr05-augmenton",
                                          "slr05-augmentoff"]
    assert runs[2].settings["strategy_params"] == {"server_lr": 0.5} and runs[2].settings["augment"] is True


def test_a_too_long_run_id_is_refused():
    c = ex.parse_config({"name": "a" * 40, "scenarios": [{"name": "b" * 30}]})
    with pytest.raises(ex.ConfigError, match="not a valid RUN_ID"):
        ex.expand(c)


def test_init_run_naming_an_earlier_scenario_means_its_run_of_the_same_seed():
    c = cfg(seeds=[0, 1], scenarios=[
        {"name": "long", "settings": {"rounds": 6}},
        {"name": "crt", "settings": {"init_run": "long", "classifier_rounds": 2, "classifier_optimizer": "sgd"}},
        {"name": "elsewhere", "settings": {"init_run": "pbc-figures-central-0"}},
        {"name": "warm", "kind": "central", "settings": {"init_run": "long", "epochs": 2}}])
    runs = {r.run_id: r for r in ex.expand(c)}
    assert runs["exp-crt-0"].settings["init_run"] == "exp-long-0"
    assert runs["exp-crt-1"].settings["init_run"] == "exp-long-1"
    assert runs["exp-crt-1"].settings["classifier_optimizer"] == "sgd" and runs["exp-long-1"].settings["rounds"] == 6
    assert runs["exp-elsewhere-1"].settings["init_run"] == "pbc-figures-central-0"  # any other value: a RUN_ID
    assert runs["exp-warm-1"].settings["init_run"] == "exp-long-1"  # make central starts there too
    assert runs["exp-crt-1"].varied["init_run"] == "long"  # the table shows the setting as written
    assert "INIT_RUN=exp-long-1" in ex.command_for(runs["exp-crt-1"], results_dir=Path("/r"))  # make up
    for later in ("crt", "late"):  # the run it names must exist when this one starts
        bad = cfg(scenarios=[{"name": "crt", "settings": {"init_run": later, "classifier_rounds": 1}},
                             {"name": "late", "settings": {"rounds": 3}}])
        with pytest.raises(ex.ConfigError, match=f"scenario crt: init_run '{later}' names a scenario that runs "
                                                 "later \\(or is this one\\): list it first"):
            ex.expand(bad)


def test_only_selects_scenarios_by_name_or_glob():
    runs = ex.expand(cfg(scenarios=[{"name": "fl-iid"}, {"name": "fl-source"}, {"name": "global"}]))
    assert [r.scenario for r in ex.select(runs, "global")] == ["global"]
    assert [r.scenario for r in ex.select(runs, "fl-*")] == ["fl-iid", "fl-source"]
    assert [r.scenario for r in ex.select(runs, "global, fl-iid")] == ["fl-iid", "global"]
    assert ex.select(runs, None) == runs
    with pytest.raises(ex.ConfigError, match="matches no scenario; scenarios: fl-iid, fl-source, global"):
        ex.select(runs, "nope")


# --------------------------------------------------------------------------- commands


def test_stack_central_and_simulation_commands(tmp_path):
    c = cfg(base={"clients": 2, "strategy_params": {"server_lr": 0.5}, "augment": False,
                  "participation": "schedule:hospital-2=3-5;hospital-3=2"},
            scenarios=[{"name": "fl"}, {"name": "central", "kind": "central"},
                       {"name": "sim", "engine": "simulation", "settings": {"concurrency": 4}}])
    fl, central, sim = ex.expand(c)
    assert ex.command_for(fl, results_dir=tmp_path) == [
        "make", "--no-print-directory", "up", "RUN_ID=exp-fl-0", f"RESULTS_DIR={tmp_path}", "SEED=0",
        "CLIENTS=2", 'STRATEGY_PARAMS={"server_lr":0.5}', "AUGMENT=false",
        "PARTICIPATION=schedule:hospital-2=3-5;hospital-3=2"]
    assert ex.command_for(central, results_dir=tmp_path)[2] == "central"
    cmd = ex.command_for(sim, results_dir=tmp_path, python="/py")
    assert cmd[:9] == ["/py", "-m", "hemafed_aggregator.simulate", "--run-id", "exp-sim-0", "--results-dir",
                       str(tmp_path), "--seed", "0"]
    assert cmd[9:] == ["--clients", "2", "--strategy-params", '{"server_lr":0.5}', "--augment", "false",
                       "--participation", "schedule:hospital-2=3-5;hospital-3=2", "--concurrency", "4"]


def test_runs_with_the_same_split_share_a_data_folder(tmp_path):
    c = cfg(base={"dataset": "synthetic", "clients": 2, "rounds": 3},
            scenarios=[{"name": "a1", "settings": {"split": "iid", "schedule": "weekly"}},
                       {"name": "a2", "settings": {"split": "iid", "schedule": "weekly-recycle"}},
                       {"name": "central", "kind": "central", "settings": {"split": "iid"}},
                       {"name": "b", "settings": {"split": "source"}},
                       {"name": "c", "settings": {"split": "iid", "clients": 3}}], seeds=[0, 1])
    runs = ex.expand(c)
    folder = {(r.scenario, r.seed): ex.split_folder(r) for r in runs}
    assert folder["a1", 0] == folder["a2", 0] == folder["central", 0]
    assert len({folder["a1", 0], folder["b", 0], folder["c", 0], folder["a1", 1]}) == 4
    cmd = ex.command_for(runs[0], results_dir=tmp_path, data_mounts=tmp_path / "dm")
    assert cmd[6] == f"DATA_MOUNTS={tmp_path / 'dm' / folder['a1', 0]}" and folder["a1", 0].startswith("split-")
    # simulation runs split in the engine (its own cache): no DATA_MOUNTS
    sim = ex.expand(ex.parse_config({"name": "s", "engine": "simulation", "base": {"clients": 2}}))[0]
    assert not any(a.startswith("DATA_MOUNTS") for a in ex.command_for(sim, results_dir=tmp_path,
                                                                       data_mounts=tmp_path))


def test_simulation_commands_are_accepted_by_the_simulation_cli(tmp_path):
    """Every setting name the runner passes is an option of the simulation engine."""
    from hemafed_aggregator import simulate

    c = ex.parse_config({"name": "s", "engine": "simulation", "base": {
        "clients": 4, "split": "noniid", "alpha": 0.3, "dataset": "synthetic", "rounds": 3, "local_epochs": 2,
        "batch_size": 16, "learning_rate": 0.01, "strategy": "fedadam", "strategy_params": {"server_lr": 0.1},
        "image_size": 16, "concurrency": 1, "min_per_hospital": 4, "schedule": "weekly", "departed": "keep",
        "participation": "random:0.5", "local_norm": True, "tf_threads": 1}})
    (run,) = ex.expand(c)
    cmd = ex.command_for(run, results_dir=tmp_path, python="py")
    rc, data, args = simulate.parse(cmd[3:])
    assert (rc.run_id, rc.seed, rc.rounds, rc.local_epochs, rc.batch_size) == ("s-base-0", 0, 3, 2, 16)
    assert rc.learning_rate == 0.01 and rc.strategy == "fedadam" and rc.strategy_params == {"server_lr": 0.1}
    assert rc.schedule == "weekly" and rc.departed == "keep" and rc.participation == "random:0.5"
    assert rc.local_norm is True and rc.image_size == 16
    assert (data.clients, data.split, data.alpha, data.dataset, data.min_per_hospital) == (4, "noniid", 0.3,
                                                                                         "synthetic", 4)
    assert args.concurrency == 1 and args.results_dir == tmp_path


def test_clean_env_keeps_infrastructure_and_drops_run_options():
    env = ex.clean_env({"PATH": "/bin", "COMPOSE_PROJECT_NAME": "p", "METRICS_PORT": "1", "DATA_MOUNTS": "/d",
                        "MAKEFLAGS": "ROUNDS=9", "MAKELEVEL": "1", "ROUNDS": "9", "CLIENTS": "4", "SEED": "3",
                        "RUN_ID": "x", "STRATEGY_PARAMS": "{}", "HOSPITALS": "h"})
    assert env == {"PATH": "/bin", "COMPOSE_PROJECT_NAME": "p", "METRICS_PORT": "1", "DATA_MOUNTS": "/d"}


# --------------------------------------------------------------------------- results (fake results dirs)


def write_run(results: Path, run_id: str, *, accs=(0.5, 0.7), test_acc=0.66, f1=0.6, status="finished",
              bytes_per_hospital=1000, hospitals=2, test=True, message=""):
    """A results dir as the aggregator writes it (RunState.public() and test_results.json)."""
    d = results / run_id
    d.mkdir(parents=True, exist_ok=True)
    rounds = [{"round": i, "global": {"val_accuracy_median": a, "val_accuracy_mean": a - 0.01, "val_loss": 1 - a},
               "hospitals": {f"hospital-{h}": {"status": "ok", "update_bytes": bytes_per_hospital}
                             for h in range(1, hospitals + 1)},
               "duration_seconds": 3.0 + i, "report": {}} for i, a in enumerate(accs, 1)]
    best = max(range(len(accs)), key=lambda i: accs[i]) if accs else None
    state = {"run_id": run_id, "rounds_total": len(accs), "status": status, "round": len(accs),
             "best_round": best + 1 if best is not None else None,
             "best_val_accuracy": accs[best] if best is not None else None, "message": message,
             "started_at": 1000.0, "finished_at": 1042.5, "hospitals": {}, "rounds": rounds,
             "rounds_completed": len(accs)}
    (d / "run.json").write_text(json.dumps(state))
    if test:
        (d / "test_results.json").write_text(json.dumps({"accuracy": test_acc, "macro_f1": f1, "loss": 0.9}))


class FakeCommands:
    """Stands in for `make up` / `make down` / simulate: records calls and writes results."""

    def __init__(self, results: Path, outcomes: dict[str, dict] | None = None) -> None:
        self.results = results
        self.outcomes = outcomes or {}
        self.calls: list[list[str]] = []

    def __call__(self, cmd, env, log_path, timeout):
        self.calls.append(cmd)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("line one\nline two\n")
        if cmd[2] == "down":
            return 0
        run_id = next(a.split("=", 1)[1] for a in cmd if a.startswith("RUN_ID=")) if cmd[0] == "make" else cmd[4]
        out = self.outcomes.get(run_id, {})
        if out.get("raise"):
            raise OSError("make: not found")
        if out.get("write", True):
            write_run(self.results, run_id, **out.get("run", {}))
        return out.get("rc", 0)


def test_a_run_writes_the_tables_the_csv_and_the_plot(tmp_path):
    c = cfg(scenarios=[{"name": "iid", "settings": {"split": "iid"}},
                       {"name": "skew", "settings": {"split": "noniid"}}])
    fake = FakeCommands(tmp_path, {"exp-skew-0": {"run": {"accs": (0.3, 0.6, 0.5), "test_acc": 0.55, "f1": 0.5,
                                                          "hospitals": 3}}})
    lines = []
    results = ex.Runner(c, tmp_path, run_command=fake, out=lines.append).run(ex.expand(c))
    # each stack run is followed by `make down`
    assert [cmd[2] for cmd in fake.calls] == ["up", "down", "up", "down"]
    assert [r.status for r in results] == ["finished", "finished"]
    skew = results[1]
    assert (skew.best_round, skew.best_val, skew.test_accuracy, skew.macro_f1) == (2, 0.6, 0.55, 0.5)
    assert skew.bytes_per_round == 3000 and skew.train_seconds == pytest.approx(42.5)
    assert skew.wall_seconds is not None and skew.wall_seconds >= 0
    out = tmp_path / "experiments" / "exp"
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["run_id"] for r in rows] == ["exp-iid-0", "exp-skew-0"]
    assert rows[1]["scenario"] == "skew" and rows[1]["settings"] == "split=noniid" and rows[1]["status"] == "finished"
    assert rows[1]["best_round"] == "2" and rows[1]["best_val"] == "0.6000" and rows[1]["test_accuracy"] == "0.5500"
    assert rows[1]["macro_f1"] == "0.5000" and rows[1]["bytes_per_round"] == "3000" and rows[1]["message"] == ""
    with (out / "accuracy_per_round.csv").open() as f:
        per_round = list(csv.DictReader(f))
    assert [(r["run_id"], r["round"], r["val_accuracy_median"]) for r in per_round] == [
        ("exp-iid-0", "1", "0.5000"), ("exp-iid-0", "2", "0.7000"),
        ("exp-skew-0", "1", "0.3000"), ("exp-skew-0", "2", "0.6000"), ("exp-skew-0", "3", "0.5000")]
    assert per_round[2]["bytes"] == "3000" and per_round[2]["hospitals_ok"] == "3"
    md = (out / "results.md").read_text()
    assert "| skew | 0 | split=noniid | finished | 2 | 0.6000 | 0.5500 | 0.5000 |" in md
    png = (out / "accuracy_per_round.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    plan = json.loads((out / "plan.json").read_text())
    assert [p["run_id"] for p in plan] == ["exp-iid-0", "exp-skew-0"]
    record = json.loads((out / "runs" / "exp-skew-0.json").read_text())
    assert record["status"] == "finished" and record["returncode"] == 0 and record["command"][2] == "up"
    assert record["config_check"] == "not applicable"  # no fetcher injected
    assert any("exp-skew-0 (federated, stack)" in ln for ln in lines)


def test_runs_with_results_are_skipped_and_force_runs_them_again(tmp_path):
    c = cfg(grid={"split": ["iid", "noniid"]})
    write_run(tmp_path, "exp-iid-0", test_acc=0.9)
    fake = FakeCommands(tmp_path)
    lines = []
    results = ex.Runner(c, tmp_path, run_command=fake, out=lines.append).run(ex.expand(c))
    assert [cmd[3] for cmd in fake.calls if cmd[2] == "up"] == ["RUN_ID=exp-noniid-0"]
    assert "[1/2] exp-iid-0 (federated, stack): results exist, skipped" in lines
    assert results[0].status == "finished" and results[0].test_accuracy == 0.9  # collected all the same
    (tmp_path / "exp-iid-0" / "checkpoint").mkdir()  # --force starts afresh: no resume from the old run
    fake2 = FakeCommands(tmp_path)
    ex.Runner(c, tmp_path, run_command=fake2, force=True, out=lambda s: None).run(ex.expand(c))
    assert [cmd[3] for cmd in fake2.calls if cmd[2] == "up"] == ["RUN_ID=exp-iid-0", "RUN_ID=exp-noniid-0"]
    assert not (tmp_path / "exp-iid-0" / "checkpoint").exists()


def test_a_failed_run_is_recorded_and_the_next_one_runs(tmp_path):
    c = cfg(grid={"strategy": ["fedavg", "fedprox", "fedadam"]})
    fake = FakeCommands(tmp_path, {
        "exp-fedavg-0": {"rc": 1, "run": {"status": "failed", "accs": (0.4,), "test": False,
                                          "message": "round 2: only 1 hospital(s) answered; MIN_CLIENTS is 2"}},
        "exp-fedprox-0": {"raise": True, "write": False},
    })
    results = ex.Runner(c, tmp_path, run_command=fake, out=lambda s: None).run(ex.expand(c))
    assert [cmd[3] for cmd in fake.calls if cmd[2] == "up"] == ["RUN_ID=exp-fedavg-0", "RUN_ID=exp-fedprox-0",
                                                                "RUN_ID=exp-fedadam-0"]
    failed, crashed, ok = results
    assert failed.status == "failed" and failed.test_accuracy is None
    assert failed.message == "exit status 1: round 2: only 1 hospital(s) answered; MIN_CLIENTS is 2"
    assert failed.rounds[0]["val_accuracy_median"] == 0.4  # what it did before failing is kept
    assert crashed.status == "failed" and crashed.message == "OSError: make: not found" and crashed.rounds == []
    assert ok.status == "finished"
    rows = list(csv.DictReader((tmp_path / "experiments" / "exp" / "results.csv").open()))
    assert [r["status"] for r in rows] == ["failed", "failed", "finished"]
    assert rows[0]["message"].startswith("exit status 1: round 2")
    md = (tmp_path / "experiments" / "exp" / "results.md").read_text()
    assert "failed: exit status 1: round 2: only 1 hospital(s) answered" in md
    # a failed run is not "existing": the next invocation runs it again (and only it and the crashed one)
    fake2 = FakeCommands(tmp_path)
    again = ex.Runner(c, tmp_path, run_command=fake2, out=lambda s: None).run(ex.expand(c))
    assert [cmd[3] for cmd in fake2.calls if cmd[2] == "up"] == ["RUN_ID=exp-fedavg-0", "RUN_ID=exp-fedprox-0"]
    assert [r.status for r in again] == ["finished"] * 3 and again[0].message == ""


def test_a_zero_exit_without_test_results_is_a_failure(tmp_path):
    c = cfg()
    fake = FakeCommands(tmp_path, {"exp-base-0": {"run": {"test": False}}})
    (res,) = ex.Runner(c, tmp_path, run_command=fake, out=lambda s: None).run(ex.expand(c))
    assert res.status == "failed" and res.message == "exit status 0, but no test results were written"


def test_a_timed_out_run_says_so_with_the_log_tail(tmp_path):
    c = cfg()
    fake = FakeCommands(tmp_path, {"exp-base-0": {"rc": 124, "write": False}})
    (res,) = ex.Runner(c, tmp_path, run_command=fake, out=lambda s: None).run(ex.expand(c))
    assert res.status == "failed" and res.message == "exit status 124 (timed out): line one / line two"


def test_settings_the_aggregator_did_not_receive_are_flagged(tmp_path):
    c = cfg(base={"clients": 3, "rounds": 2, "schedule": "weekly", "learning_rate": 0.01,
                  "strategy_params": {"server_lr": 0.5}, "strategy": "fedavg"})
    # as the aggregator records it: its RunConfig, with "strategy" replaced by the strategy's description
    recorded = {"rounds": 2, "schedule": "full", "learning_rate": 0.01, "strategy_params": {"server_lr": 0.5},
                "strategy": {"name": "fedavg", "server_lr": 1.0}}
    fake = FakeCommands(tmp_path)
    (res,) = ex.Runner(c, tmp_path, run_command=fake, fetch_config=lambda rid: recorded,
                       out=lambda s: None).run(ex.expand(c))
    assert res.status == "finished"
    assert res.message == "settings not received by the aggregator: schedule=weekly (aggregator used 'full')"
    record = json.loads((tmp_path / "experiments" / "exp" / "runs" / "exp-base-0.json").read_text())
    assert record["config_check"] == "mismatch" and record["aggregator_config"] == recorded
    ok = {**recorded, "schedule": "weekly"}
    assert ex.unforwarded(ex.expand(c)[0], ok) == []
    # no metrics API to ask (e.g. it failed to start): said so, not taken for a pass
    ex.Runner(c, tmp_path, run_command=FakeCommands(tmp_path), fetch_config=lambda rid: None, force=True,
              out=lambda s: None).run(ex.expand(c))
    record = json.loads((tmp_path / "experiments" / "exp" / "runs" / "exp-base-0.json").read_text())
    assert record["config_check"] == "unavailable" and record["message"] == ""


def test_several_seeds_get_a_mean_and_sd_table(tmp_path):
    c = cfg(seeds=[0, 1], grid={"split": ["iid"]})
    fake = FakeCommands(tmp_path, {"exp-iid-0": {"run": {"test_acc": 0.6}}, "exp-iid-1": {"run": {"test_acc": 0.8}}})
    ex.Runner(c, tmp_path, run_command=fake, out=lambda s: None).run(ex.expand(c))
    md = (tmp_path / "experiments" / "exp" / "results.md").read_text()
    assert "| iid | 2/2 | 0.7000 ± 0.1414 | 0.6000 ± 0.0000 | 0.7000 ± 0.0000 |" in md


def test_only_runs_the_selection_but_the_table_covers_the_plan(tmp_path):
    c = cfg(grid={"split": ["iid", "noniid"]})
    fake = FakeCommands(tmp_path)
    runs = ex.select(ex.expand(c), "noniid")
    results = ex.Runner(c, tmp_path, run_command=fake, out=lambda s: None).run(runs)
    assert [r.run_id for r in results] == ["exp-noniid-0"]
    rows = list(csv.DictReader((tmp_path / "experiments" / "exp" / "results.csv").open()))
    assert [(r["run_id"], r["status"]) for r in rows] == [("exp-iid-0", "not run"), ("exp-noniid-0", "finished")]


def test_main_dry_run_prints_the_plan_and_bad_configs_exit_2(tmp_path, capsys):
    good = tmp_path / "g.yaml"
    good.write_text("name: g\nbase: {clients: 3}\ngrid: {split: [iid, noniid]}\n")
    assert ex.main([str(good), "--dry-run", "--results-dir", str(tmp_path), "--data-mounts",
                    str(ROOT / "data-mounts")]) == 0
    out = capsys.readouterr().out
    assert "2 run(s):" in out and "g-iid-0" in out and "[to run]" in out
    folder = ex.split_folder(ex.expand(ex.load_config(good))[1])
    assert (f"make --no-print-directory up RUN_ID=g-noniid-0 RESULTS_DIR={tmp_path} SEED=0 "
            f"DATA_MOUNTS={ROOT / 'data-mounts' / folder} CLIENTS=3 SPLIT=noniid") in out
    assert not (tmp_path / "experiments").exists()
    bad = tmp_path / "b.yaml"
    bad.write_text("name: b\nbase: {roundz: 3}\n")
    assert ex.main([str(bad), "--dry-run"]) == 2
    assert "unknown setting 'roundz'" in capsys.readouterr().err
    assert ex.main([str(good), "--dry-run", "--only", "zzz"]) == 2


def test_the_grid_can_run_on_the_other_engine_as_its_own_experiment():
    c = cfg(scenarios=[{"name": "fl", "settings": {"split": "iid"}}, {"name": "central", "kind": "central"}])
    sim = ex.with_engine(c, "simulation")
    runs = ex.expand(sim)
    assert sim.name == "exp-sim" and [(r.run_id, r.engine, r.kind) for r in runs] == [
        ("exp-sim-fl-0", "simulation", "federated")]  # make central needs the stack
    assert runs[0].settings == {"dataset": "synthetic", "rounds": 2, "clients": 3, "split": "iid"}
    assert ex.with_engine(c, "stack") is c
    only_central = cfg(scenarios=[{"name": "central", "kind": "central"}])
    with pytest.raises(ex.ConfigError, match="no scenario can run on engine simulation"):
        ex.with_engine(only_central, "simulation")


def test_seeds_override_replicates_the_runs_on_other_seeds(tmp_path, capsys):
    c = cfg(seeds=[0], scenarios=[{"name": "fl", "settings": {"split": "noniid"}}])
    again = ex.with_seeds(c, "1, 2")
    runs = ex.expand(again)
    assert again.name == c.name and again.seeds == [1, 2]
    assert [(r.run_id, r.seed) for r in runs] == [("exp-fl-1", 1), ("exp-fl-2", 2)]
    assert runs[0].settings == ex.expand(c)[0].settings  # only the seed differs
    # a seed decides the data split too: each seed's runs get their own split folder
    assert ex.split_folder(runs[0]) != ex.split_folder(runs[1]) != ex.split_folder(ex.expand(c)[0])
    assert ex.with_seeds(cfg(repeats=3), "5").seeds == [5]
    with pytest.raises(ex.ConfigError, match="comma-separated integers"):
        ex.with_seeds(c, "1,x")
    with pytest.raises(ex.ConfigError, match="at least one seed"):
        ex.with_seeds(c, " , ")
    with pytest.raises(ex.ConfigError, match="seeds must be unique"):
        ex.with_seeds(c, "1,1")
    good = tmp_path / "g.yaml"
    good.write_text("name: g\nbase: {clients: 3}\nscenarios: [{name: fl}]\n")
    assert ex.main([str(good), "--dry-run", "--seeds", "3", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 run(s):" in out and "g-fl-3" in out and "SEED=3 " in out and "g-fl-0" not in out
    assert ex.main([str(good), "--dry-run", "--seeds", "three"]) == 2
    assert "--seeds 'three'" in capsys.readouterr().err


def test_report_only_rewrites_tables_from_existing_results(tmp_path):
    good = tmp_path / "g.yaml"
    good.write_text("name: g\ngrid: {split: [iid]}\n")
    write_run(tmp_path, "g-iid-0", test_acc=0.77)
    assert ex.main([str(good), "--report-only", "--results-dir", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "experiments" / "g" / "results.csv").open()))
    assert rows[0]["test_accuracy"] == "0.7700" and rows[0]["status"] == "finished"


# --------------------------------------------------------------------------- shipped configs


SHIPPED_CONFIGS = {  # name: (runs, engines)
    "smoke": (2, {"stack"}), "thesis": (7, {"stack"}), "thesis-quick": (7, {"stack"}),
    "intermittent": (12, {"stack"}), "sweep100": (9, {"simulation"}), "pbc-figures": (19, {"stack", "simulation"}),
    "dp-client-level": (3, {"simulation"}), "dp-many-hospitals": (12, {"simulation"}),
    "label-skew": (29, {"simulation", "stack"}),
    "thesis-source": (4, {"stack"}),
}


def test_every_shipped_config_is_listed():
    assert {p.stem for p in (ROOT / "experiments").glob("*.yaml")} == set(SHIPPED_CONFIGS)


@pytest.mark.parametrize("name", sorted(SHIPPED_CONFIGS))
def test_shipped_configs_are_valid(name):
    n_runs, engines = SHIPPED_CONFIGS[name]
    c = ex.load_config(ROOT / "experiments" / f"{name}.yaml")
    runs = ex.expand(c)
    assert c.name == name and len(runs) == n_runs and {r.engine for r in runs} == engines
    assert all(r.engine == "stack" for r in runs if r.kind == "central")  # make central: its own container
    for r in runs:
        ex.command_for(r, results_dir=Path("/r"))


@pytest.mark.parametrize(("name", "dp_scenario", "plain_scenario"), [
    ("dp-client-level", "dp-eps8", "non-private"), ("dp-many-hospitals", "dp-eps8", "non-private"),
    ("dp-many-hospitals", "dp-eps8-val-random", "non-private-val-random"),
    ("dp-many-hospitals", "dp-eps8-adaptive-val-random", "non-private-val-random"),
    ("dp-many-hospitals", "dp-eps8-adaptive-ema-val-random", "non-private-val-random"),
    ("dp-many-hospitals", "dp-eps8-adaptive-momentum-val-random", "non-private-val-random"),
    ("dp-many-hospitals", "dp-eps8-adaptive-small-val-random", "non-private-small-val-random"),
    ("dp-many-hospitals", "dp-eps8-adaptive-r100-val-random", "non-private-r100-val-random")])
def test_dp_configs_stay_within_their_privacy_budget(name, dp_scenario, plain_scenario):
    """Each DP-FedAvg scenario's noise keeps client-level epsilon <= 8 at delta 1e-5 over the run's
    rounds at its sampling rate (the accountant the aggregator reports with), and the DP run differs
    from its non-private twin only in its strategy: the comparison is like for like. A server
    optimizer on the noised average (server_momentum, server_lr) is post-processing: it costs no
    privacy, and the twin stays plain FedAvg (FedAvgM scored lower without noise)."""
    from hemafed.privacy import rdp_epsilon

    runs = {r.scenario: r for r in ex.expand(ex.load_config(ROOT / "experiments" / f"{name}.yaml"))}
    dp, plain = runs[dp_scenario].settings, runs[plain_scenario].settings
    q = float(dp.get("fraction_fit", 1.0))
    params = dp["strategy_params"]
    assert dp["strategy"] == "dp_fedavg" and plain["strategy"] == "fedavg"
    assert 7.5 < rdp_epsilon(q, params["noise_multiplier"], int(dp["rounds"]), 1e-5) <= 8.0
    assert {k: v for k, v in dp.items() if k not in ("strategy", "strategy_params")} == \
        {k: v for k, v in plain.items() if k not in ("strategy", "strategy_params")}
    dp_side = ("clip_norm", "noise_multiplier", "noise_seed", "target_unclipped_quantile", "clip_learning_rate",
               "clipped_count_stddev",  # the mechanism
               "server_momentum", "server_lr")  # the server optimizer on its noised average
    assert {k: v for k, v in params.items() if k not in dp_side} == plain.get("strategy_params", {})


def test_pbc_figures_chain_starts_from_the_same_seeds_runs():
    """The centralized and federated chains name their earlier stages by scenario, so another seed
    runs a chain of its own instead of starting from seed 0's weights."""
    c = ex.load_config(ROOT / "experiments" / "pbc-figures.yaml").model_copy(update={"seeds": [0, 1]})
    init = {(r.scenario, r.seed): r.settings.get("init_run") for r in ex.expand(c)}
    for seed in (0, 1):
        assert init[("central-deep-48-restart", seed)] == f"pbc-figures-central-deep-48-e28-{seed}"
        assert init[("central-deep-48-restart2", seed)] == f"pbc-figures-central-deep-48-restart-{seed}"
        assert init[("central-deep-64-fixres", seed)] == f"pbc-figures-central-deep-48-restart2-{seed}"
        assert init[("central-deep-48-e28", seed)] is None
        # and the federated chain, stage by stage
        fed = "pbc-figures-fedlc-m07-babu-deep"
        assert init[("fedlc-m07-babu-deep-48", seed)] is None
        assert init[("fedlc-m07-babu-deep-48-more", seed)] == f"{fed}-48-{seed}"
        assert init[("fedlc-m07-babu-deep-48-restart", seed)] == f"{fed}-48-more-{seed}"
        assert init[("fedlc-m07-babu-deep-64-fixres", seed)] == f"{fed}-48-restart-{seed}"
        assert init[("fedlc-m07-babu-deep-64-fixres2", seed)] == f"{fed}-64-fixres-{seed}"
        assert init[("fedlc-m07-babu-deep-64-fixres2-swa", seed)] == f"{fed}-64-fixres-{seed}"
        assert init[("fedlc-m07-babu-deep-64-fixres2-swa-const", seed)] == f"{fed}-64-fixres-{seed}"
        assert init[("fedlc-m07-babu-deep-64-crt20", seed)] == f"{fed}-64-fixres2-{seed}"
        assert init[("fedlc-m07-babu-deep-64-swa-crt20", seed)] == f"{fed}-64-fixres2-swa-{seed}"
    # the weight-averaging run is the second 64 px restart with SWA_ROUNDS and nothing else changed
    by = {r.scenario: r.settings for r in ex.expand(c) if r.seed == 0}
    swa = dict(by["fedlc-m07-babu-deep-64-fixres2-swa"])
    assert swa.pop("swa_rounds") == 10 and swa == by["fedlc-m07-babu-deep-64-fixres2"]
    # and with a constant rate instead of the cosine decay, nothing else changed
    const = by["fedlc-m07-babu-deep-64-fixres2-swa-const"]
    assert (const["lr_schedule"], swa["lr_schedule"]) == ("constant", "cosine")
    assert ({k: v for k, v in const.items() if not k.startswith("lr_")}
            == {k: v for k, v in by["fedlc-m07-babu-deep-64-fixres2-swa"].items() if not k.startswith("lr_")})


def test_thesis_has_the_six_scenarios():
    runs = ex.expand(ex.load_config(ROOT / "experiments" / "thesis.yaml"))
    by = {r.scenario: r.settings for r in runs}
    assert set(by) == {"global-case1", "global-case2", "fl-iid-case1", "fl-iid-case2", "fl-source-case1",
                       "fl-source-case2", "central"}
    assert [r.kind for r in runs if r.scenario == "central"] == ["central"]  # the reference, make central
    del by["central"]
    assert by["global-case1"]["clients"] == 1 and by["fl-iid-case1"]["clients"] == 2
    assert by["fl-source-case2"]["split"] == "source" and by["fl-iid-case2"]["split"] == "iid"
    assert {by[s]["schedule"] for s in by if s.endswith("case1")} == {"weekly"}
    assert {by[s]["schedule"] for s in by if s.endswith("case2")} == {"weekly-recycle"}
    assert all(s["dataset"].startswith("pbc=../shared/data/pbc-128,") for s in by.values())


def test_a_run_config_as_the_aggregator_records_it_matches_the_shipped_settings():
    """What the aggregator records (RunConfig dumped as JSON, "strategy" its description) passes the
    check for every run of the shipped stack configs: no false alarms from types or names."""
    from hemafed_aggregator.settings import RunConfig
    from hemafed_aggregator.simulate import from_values

    fields = ex.run_settings()
    for name in ("thesis", "intermittent", "smoke"):
        for run in ex.expand(ex.load_config(ROOT / "experiments" / f"{name}.yaml")):
            values = {k: (json.dumps(v) if k == "strategy_params" else v) for k, v in run.settings.items()
                      if k in fields}
            recorded = from_values(RunConfig, values).model_dump(mode="json")
            recorded["strategy"] = {"name": recorded["strategy"], "weighted": True}
            assert ex.unforwarded(run, recorded) == [], run.run_id


def test_a_run_with_test_time_augmentation_shows_both_accuracies(tmp_path):
    c = cfg(scenarios=[{"name": "tta", "settings": {"tta": True}}])
    fake = FakeCommands(tmp_path, {"exp-tta-0": {"run": {"test_acc": 0.96}}})
    runner = ex.Runner(c, tmp_path, run_command=fake, out=lambda line: None)
    d = tmp_path / "exp-tta-0"
    results = runner.run(ex.expand(c))
    assert results[0].test_accuracy_single_view is None  # no TTA entry in its report
    test = json.loads((d / "test_results.json").read_text())
    test["test_time_augmentation"] = {"views": 8, "single_view": {"accuracy": 0.95, "macro_f1": 0.9, "loss": 0.2}}
    (d / "test_results.json").write_text(json.dumps(test))
    [res] = [ex.collect(run, tmp_path, None) for run in ex.expand(c)]
    assert (res.test_accuracy, res.test_accuracy_single_view) == (0.96, 0.95)
    out = tmp_path / "out"
    ex.write_results(c, [res], out)
    with (out / "results.csv").open() as f:
        [row] = list(csv.DictReader(f))
    assert (row["test_accuracy"], row["test_accuracy_single_view"]) == ("0.9600", "0.9500")
    assert "| 0.9600 (8-view TTA; 1 view 0.9500) |" in (out / "results.md").read_text()
    assert (res.final_round, res.final_test_accuracy) == (None, None) and row["final_test_accuracy"] == ""

    # validation picked an earlier round than the last: the last round's model is shown beside
    test["final_model"] = {"round": 20, "loss": 0.3, "accuracy": 0.97, "macro_f1": 0.96, "recall": {}}
    (d / "test_results.json").write_text(json.dumps(test))
    [res] = [ex.collect(run, tmp_path, None) for run in ex.expand(c)]
    assert (res.final_round, res.final_test_accuracy) == (20, 0.97)
    ex.write_results(c, [res], out)
    with (out / "results.csv").open() as f:
        [row] = list(csv.DictReader(f))
    assert (row["test_accuracy"], row["final_round"], row["final_test_accuracy"]) == ("0.9600", "20", "0.9700")
    assert "| 0.9600 (8-view TTA; 1 view 0.9500; final round 20: 0.9700) |" in (out / "results.md").read_text()


def test_a_test_set_of_several_sources_gets_a_column_per_source(tmp_path):
    c = cfg(scenarios=[{"name": "iid", "settings": {"split": "iid"}}, {"name": "src", "settings": {"split": "source"}}])
    fake = FakeCommands(tmp_path)
    ex.Runner(c, tmp_path, run_command=fake, out=lambda line: None).run(ex.expand(c))
    # a report with per_source, as the aggregator writes it now
    d = tmp_path / "exp-iid-0"
    test = json.loads((d / "test_results.json").read_text())
    test["per_source"] = {"bccd": {"num_examples": 4, "accuracy": 0.25, "macro_recall": 0.2, "macro_f1": 0.1},
                          "pbc": {"num_examples": 96, "accuracy": 0.9, "macro_recall": 0.9, "macro_f1": 0.9}}
    (d / "test_results.json").write_text(json.dumps(test))
    # a report from before per_source existed: the figures come from its per_image.csv
    d = tmp_path / "exp-src-0"
    test = json.loads((d / "test_results.json").read_text())
    test["classes"] = ["a", "b"]
    (d / "test_results.json").write_text(json.dumps(test))
    (d / "per_image.csv").write_text(
        "file,top1,top1_score,top2,top2_score,true\n"
        "a/pbc__a__1.jpg,a,0.9,b,0.1,a\n" "b/pbc__b__2.jpg,a,0.6,b,0.4,b\n"
        "a/bccd__a__3.jpg,a,0.7,b,0.3,a\n")
    results = [ex.collect(run, tmp_path, None) for run in ex.expand(c)]
    assert results[0].test_by_source == {"bccd": 0.25, "pbc": 0.9}
    assert results[1].test_by_source == {"bccd": 1.0, "pbc": 0.5}
    out = tmp_path / "out"
    ex.write_results(c, results, out)
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["test_accuracy_by_source"] for r in rows] == ["bccd=0.2500 pbc=0.9000", "bccd=1.0000 pbc=0.5000"]
    md = (out / "results.md").read_text()
    assert "| MB/round | test: bccd | test: pbc |" in md
    assert "| 0.2500 | 0.9000 |" in md and "| 1.0000 | 0.5000 |" in md
    # one source (or none): no extra columns, an empty CSV cell
    (d / "per_image.csv").write_text("file,top1,top1_score,top2,top2_score,true\na/x.png,a,0.9,b,0.1,a\n")
    results = [ex.collect(run, tmp_path, None) for run in ex.expand(c)[1:]]
    assert results[0].test_by_source == {}
    ex.write_results(c, results, out)
    assert "test: " not in (out / "results.md").read_text()
    with (out / "results.csv").open() as f:
        assert next(csv.DictReader(f))["test_accuracy_by_source"] == ""
