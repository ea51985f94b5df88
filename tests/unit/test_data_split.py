"""The split tool: allocation helpers, IID / Dirichlet / source splits, files on disk, manifest, CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hemafed.data.split import (
    SplitError,
    SplitOptions,
    default_source_weights,
    largest_remainder,
    main,
    parse_source_proportions,
    partition,
    run_split,
    weighted_deal,
)
from hemafed.data.testing import make_image_folder

SMALL_SYN = ["--synthetic-per-class", "12", "--synthetic-size", "16", "--min-per-hospital", "5"]


def _files(root: Path) -> dict[str, list[str]]:
    """{top folder: sorted 'class/file' list} for hospital-* and test."""
    out: dict[str, list[str]] = {}
    for top in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out[top.name] = sorted(f.relative_to(top).as_posix() for f in top.rglob("*") if f.is_file())
    return out


def _labels(counts: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


# --------------------------------------------------------------------------- helpers


def test_largest_remainder_sums_and_is_proportional() -> None:
    assert largest_remainder(10, [1, 1, 1]).tolist() == [4, 3, 3]
    assert largest_remainder(7, [0.5, 0.25, 0.25]).tolist() == [3, 2, 2]  # 3.5, 1.75, 1.75
    assert largest_remainder(0, [1, 2]).tolist() == [0, 0]


def test_weighted_deal_matches_weights_and_skips_zero_bins() -> None:
    seq = weighted_deal(300, [2, 1, 0])
    assert Counter(seq.tolist()) == {0: 200, 1: 100}
    prefix = np.bincount(seq[:31], minlength=3)
    assert abs(prefix[0] - 31 * 2 / 3) <= 1


def test_default_source_weights_follow_the_pbc_hrd_layout() -> None:
    w = default_source_weights(4, 2)
    assert w.tolist() == [[1, 0], [0, 1], [0.5, 0.5], [0.5, 0.5]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,0;0,1", "need one per hospital"),
        ("1,0;0,1;a,b", "numbers"),
        ("1,0;0,1;1", "2 weights"),
        ("1,0;0,1;-1,2", ">= 0"),
        ("1,0;0,1;0,0", "positive weight"),
    ],
)
def test_parse_source_proportions_errors(text: str, message: str) -> None:
    with pytest.raises(SplitError, match=message):
        parse_source_proportions(text, 3, 2)


# --------------------------------------------------------------------------- partition (no files)


def test_iid_is_balanced_per_class_and_in_total() -> None:
    labels = _labels([50, 31, 7, 100])
    a = partition(labels, np.zeros_like(labels), n_clients=3, split="iid", seed=0)
    table = np.array([np.bincount(labels[a == h], minlength=4) for h in range(3)])
    assert (table.max(axis=0) - table.min(axis=0)).max() <= 1
    assert np.ptp(np.bincount(a)) <= 1


def test_partition_is_deterministic_for_a_seed() -> None:
    labels = _labels([40, 40, 40])
    src = np.zeros_like(labels)
    a = partition(labels, src, n_clients=4, split="noniid", alpha=0.3, seed=5)
    b = partition(labels, src, n_clients=4, split="noniid", alpha=0.3, seed=5)
    c = partition(labels, src, n_clients=4, split="noniid", alpha=0.3, seed=6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def _skew(a: np.ndarray, labels: np.ndarray, n: int) -> float:
    """Mean total-variation distance between each hospital's class mix and the global mix."""
    glob = np.bincount(labels) / len(labels)
    mixes = [np.bincount(labels[a == h], minlength=len(glob)) / max(1, (a == h).sum()) for h in range(n)]
    return float(np.mean([0.5 * np.abs(m - glob).sum() for m in mixes]))


def test_dirichlet_small_alpha_is_skewed_large_alpha_is_close_to_iid() -> None:
    labels = _labels([200] * 8)
    src = np.zeros_like(labels)
    skewed = partition(labels, src, n_clients=5, split="noniid", alpha=0.1, min_per_hospital=20, seed=0)
    flat = partition(labels, src, n_clients=5, split="noniid", alpha=1000.0, min_per_hospital=20, seed=0)
    iid = partition(labels, src, n_clients=5, split="iid", seed=0)
    assert _skew(skewed, labels, 5) > 0.4
    assert _skew(flat, labels, 5) < 0.05
    assert _skew(iid, labels, 5) < 0.01


def test_min_per_hospital_is_respected_even_with_extreme_skew() -> None:
    labels = _labels([30, 30, 30])
    for seed in range(5):
        a = partition(
            labels,
            np.zeros_like(labels),
            n_clients=6,
            split="noniid",
            alpha=0.01,
            min_per_hospital=14,
            seed=seed,
        )
        assert np.bincount(a, minlength=6).min() >= 14
        assert len(a) == 90 and a.min() >= 0


def test_too_few_images_is_refused() -> None:
    labels = _labels([5, 5])
    with pytest.raises(SplitError, match="too few images"):
        partition(labels, np.zeros_like(labels), n_clients=3, split="iid", min_per_hospital=4)


def test_source_split_default_proportions() -> None:
    labels = np.tile(np.arange(4), 100)  # 400 items, 4 classes
    src = np.repeat([0, 1], 200)
    a = partition(labels, src, n_clients=4, split="source", seed=0)
    assert set(src[a == 0]) == {0} and set(src[a == 1]) == {1}
    for h in (2, 3):
        per_src = np.bincount(src[a == h], minlength=2)
        assert abs(per_src[0] - per_src[1]) <= 1
    assert np.ptp(np.bincount(a)) <= 1  # equal sizes with equal sources
    assert np.ptp(np.bincount(labels[a == 0], minlength=4)) <= 1  # still class-stratified


def test_source_split_explicit_proportions_and_min_respects_sources() -> None:
    labels = np.tile(np.arange(2), 100)
    src = np.repeat([0, 1], [60, 140])
    w = parse_source_proportions("3,0;1,1", 2, 2)
    a = partition(labels, src, n_clients=2, split="source", source_weights=w, seed=1)
    assert np.bincount(src[a == 0], minlength=2).tolist() == [45, 0]  # 3/4 of source 0
    assert np.bincount(src[a == 1], minlength=2).tolist() == [15, 140]
    a = partition(labels, src, n_clients=2, split="source", source_weights=w, min_per_hospital=55, seed=1)
    assert np.bincount(src[a == 0], minlength=2).tolist() == [55, 0]  # topped up from source 0 only
    with pytest.raises(SplitError, match="cannot give hospital-1"):  # only 60 source-0 images exist
        partition(labels, src, n_clients=2, split="source", source_weights=w, min_per_hospital=70, seed=1)


# --------------------------------------------------------------------------- run_split (files)


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    """Folder dataset: 4 classes, one corrupt file and one non-image file."""
    return make_image_folder(
        tmp_path / "lab",
        {"basophil": 14, "eosinophil": 10, "ig": 8, "platelet": 12},
        fmt="jpg",
        corrupt=1,
        non_image=1,
    )


def test_manifest_counts_equal_files_on_disk(tmp_path: Path, lab: Path) -> None:
    out = tmp_path / "out"
    run_split(SplitOptions(dataset=str(lab), clients=3, min_per_hospital=5, out=str(out)), log=lambda m: None)
    m = json.loads((out / "manifest.json").read_text())
    files = _files(out)
    assert set(files) == {"hospital-1", "hospital-2", "hospital-3", "test"}
    for name in ("hospital-1", "hospital-2", "hospital-3"):
        on_disk = Counter(f.split("/")[0] for f in files[name])
        assert {c: on_disk.get(c, 0) for c in m["classes"]} == m["hospitals"][name]["classes"]
        assert m["hospitals"][name]["total"] == len(files[name])
        assert m["hospitals"][name]["sources"] == {"lab": len(files[name])}
    assert m["test"]["total"] == len(files["test"]) and m["test"]["classes"]["basophil"] == 2
    assert sum(len(v) for v in files.values()) == 44
    assert m["skipped"]["reasons"] == {"corrupt": 1, "not_image": 1}
    assert {f["file"] for f in m["skipped"]["files"]} == {
        "basophil/img_corrupt_0.jpg",
        "basophil/img_notes_0.txt",
    }
    for key in ("seed", "dataset", "split", "alpha", "classes", "sources", "created_at", "test_fraction"):
        assert key in m
    assert m["classes"] == ["basophil", "eosinophil", "ig", "platelet"]
    assert m["sources"][0]["name"] == "lab" and m["sources"][0]["images"] == 44


def test_test_set_is_disjoint_and_files_are_byte_copies(tmp_path: Path, lab: Path) -> None:
    out = tmp_path / "out"
    run_split(SplitOptions(dataset=str(lab), clients=2, min_per_hospital=5, out=str(out)), log=lambda m: None)
    names = [Path(f).name for v in _files(out).values() for f in v]
    assert len(names) == len(set(names)) == 44  # no image in two places, none lost
    some = next((out / "test" / "ig").iterdir())
    original = lab / "ig" / some.name.split("__", 2)[2]
    assert some.read_bytes() == original.read_bytes()


def test_same_seed_same_assignment(tmp_path: Path, lab: Path) -> None:
    runs = []
    for k in range(2):
        out = tmp_path / f"out{k}"
        run_split(
            SplitOptions(dataset=str(lab), clients=3, split="noniid", min_per_hospital=3, out=str(out)),
            log=lambda m: None,
        )
        m = json.loads((out / "manifest.json").read_text())
        m.pop("created_at")
        runs.append((_files(out), m))
    assert runs[0] == runs[1]
    out = tmp_path / "out2"
    run_split(
        SplitOptions(dataset=str(lab), clients=3, split="noniid", min_per_hospital=3, seed=1, out=str(out)),
        log=lambda m: None,
    )
    assert _files(out) != runs[0][0]


def test_only_owned_paths_are_replaced(tmp_path: Path, lab: Path) -> None:
    out = tmp_path / "out"
    (out / "hospital-9" / "ig").mkdir(parents=True)
    (out / "hospital-9" / "ig" / "stale.png").write_bytes(b"x")
    (out / "hospital-notes.txt").write_text("keep me")
    (out / "README.md").write_text("keep me")
    (out / "other").mkdir()
    run_split(SplitOptions(dataset=str(lab), clients=2, min_per_hospital=5, out=str(out)), log=lambda m: None)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "hospital-1",
        "hospital-2",
        "hospital-notes.txt",
        "manifest.json",
        "other",
        "test",
    ]


def test_synthetic_source_split_writes_pngs_per_stain(tmp_path: Path) -> None:
    out = tmp_path / "out"
    opts = SplitOptions(
        split="source", clients=3, synthetic_per_class=10, synthetic_size=16, min_per_hospital=5, out=str(out)
    )
    m = run_split(opts, log=lambda m: None).manifest
    assert m["source_proportions"] == [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]
    assert m["hospitals"]["hospital-1"]["sources"]["synthetic-B"] == 0
    assert m["hospitals"]["hospital-2"]["sources"]["synthetic-A"] == 0
    h3 = m["hospitals"]["hospital-3"]["sources"]
    assert abs(h3["synthetic-A"] - h3["synthetic-B"]) <= 1 and h3["synthetic-A"] > 0
    files = _files(out)
    assert all(f.endswith(".png") for f in files["hospital-1"])
    assert all("synthetic-A__" in f for f in files["hospital-1"])


def test_merging_two_folders_with_mapping_and_same_file_names(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "a", {"neutrophil": 10, "ig": 10})
    make_image_folder(tmp_path / "b", {"NEU": 10, "IG": 10})  # same file names as in a
    (tmp_path / "map.json").write_text(json.dumps({"NEU": "neutrophil", "IG": "ig"}))
    out = tmp_path / "out"
    m = run_split(
        SplitOptions(
            dataset=f"{tmp_path / 'a'},{tmp_path / 'b'}",
            mapping=str(tmp_path / "map.json"),
            split="source",
            clients=2,
            min_per_hospital=5,
            out=str(out),
        ),
        log=lambda m: None,
    ).manifest
    assert m["classes"] == ["ig", "neutrophil"]
    assert sum(len(v) for v in _files(out).values()) == 40
    assert m["hospitals"]["hospital-2"]["sources"] == {"a": 0, "b": m["hospitals"]["hospital-2"]["total"]}


def test_dataset_inside_output_is_refused(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "out" / "hospital-1", {"ig": 30})
    with pytest.raises(SplitError, match="would replace"):
        run_split(
            SplitOptions(dataset=str(tmp_path / "out" / "hospital-1"), clients=1, out=str(tmp_path / "out")),
            log=lambda m: None,
        )


# --------------------------------------------------------------------------- CLI


def test_cli_success_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--out", str(tmp_path / "o"), "--clients", "2", *SMALL_SYN])
    out = capsys.readouterr().out
    assert rc == 0
    assert "hospital-1" in out and "hospital-2" in out and "test" in out and "platelet" in out
    assert (tmp_path / "o" / "manifest.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "/no/such/folder"], "dataset path not found: /no/such/folder"),
        (["--split", "random"], "unknown split 'random'"),
        (["--clients", "50"], "too few images"),
        (["--clients", "0"], "--clients must be >= 1"),
        (["--test-fraction", "1.5"], "--test-fraction"),
        (["--alpha", "0"], "--alpha must be > 0"),
        (["--clients", "abc"], "invalid int value"),
        (["--no-such-option"], "unrecognized arguments"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    rc = main(["--out", str(tmp_path / "o"), *SMALL_SYN, *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("hemafed-split: error: ") and message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_cli_source_split_on_single_source_fails(
    tmp_path: Path, lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["--dataset", str(lab), "--split", "source", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "--split source needs at least 2 sources" in capsys.readouterr().err
