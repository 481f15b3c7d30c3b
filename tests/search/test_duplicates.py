"""``cbir duplicates``: exact and near-duplicate groups of an indexed dataset."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cbir.cli import main
from cbir.data.manifest import MANIFEST_COLUMNS, write_csv_table
from cbir.io import save_arrays
from cbir.search import duplicates
from cbir.search.duplicates import (
    CSV_COLUMNS,
    EXACT,
    NEAR,
    DuplicatesError,
    find_duplicates,
    find_exact,
    find_near,
    group,
    load_index,
    locate_index,
)

N, DIM = 60, 256
NEAR_SETS = [[0, 1, 2], [10, 11, 12]]  # 10 - 11 - 12 a chain; 11 has another class than 10 and 12
EXACT_ONLY = [30, 31]  # identical files
EXACT_AND_NEAR = [20, 21, 22]  # 20 and 21 identical files, 22 a near copy of 20
PLANTED = {row for rows in [*NEAR_SETS, EXACT_ONLY, EXACT_AND_NEAR] for row in rows}


def planted_features(seed: int = 0) -> np.ndarray:
    """Random directions (far apart in 256-D) with near copies and exact copies planted."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, DIM)).astype(np.float32)
    noise = lambda: 0.02 * rng.normal(size=DIM)  # noqa: E731 (cosine distance ~2e-4)
    x[1], x[2] = x[0] + noise(), x[0] + noise()
    x[11] = x[10] + 0.15 * rng.normal(size=DIM)
    x[12] = x[11] + 0.15 * rng.normal(size=DIM)  # 12 near 11, farther from 10
    x[21], x[31] = x[20], x[30]
    x[22] = x[20] + noise()
    return x * rng.uniform(0.5, 3, size=(N, 1)).astype(np.float32)  # norms must not matter


def checksums() -> list[str]:
    sha = [f"{row:064x}" for row in range(N)]
    sha[21], sha[31] = sha[20], sha[30]
    return sha


@pytest.fixture
def indexed(tmp_path: Path) -> Path:
    """A workflow-like results/tiny/ with a feature file, a manifest and the images."""
    dataset = tmp_path / "results" / "tiny"
    (tmp_path / "images").mkdir()
    labels = np.array([row % 2 for row in range(N)])
    labels[[0, 1, 2, 10, 12]] = 0
    labels[11] = 1
    ids = [f"{'ab'[label]}/{row:03d}.png" for row, label in enumerate(labels)]
    paths = [f"images/{row:03d}.png" for row in range(N)]  # relative to the workflow's folder
    for row, path in enumerate(paths):
        Image.new("RGB", (16, 16), (row * 4, 100, 200)).save(tmp_path / path)
    arrays = {"features": planted_features(), "ids": np.array(ids), "paths": np.array(paths), "labels": labels}
    save_arrays(dataset / "features" / "lite.h5", arrays)
    manifest = pd.DataFrame(
        {
            "id": ids,
            "path": paths,
            "label": labels,
            "class_name": np.array(["a", "b"])[labels],
            "width": 16,
            "height": 16,
            "bytes": 100,
            "sha256": checksums(),
        },
        columns=MANIFEST_COLUMNS,
    )
    write_csv_table(manifest, dataset / "manifest.csv")
    return dataset / "features" / "lite.h5"


def group_rows(groups) -> list[list[int]]:
    return sorted(g.rows for g in groups)


def test_planted_duplicates_are_grouped(indexed: Path):
    index = load_index(indexed)
    groups, exact = find_duplicates(index, threshold=0.1)
    assert exact == [[20, 21], [30, 31]]
    assert group_rows(groups) == [[0, 1, 2], [10, 11, 12], [20, 21, 22], [30, 31]]
    by_first = {g.rows[0]: g for g in groups}
    assert by_first[30].kind == EXACT and by_first[30].max_distance < 1e-5
    assert by_first[20].kind == NEAR  # identical files merged into the near group
    assert by_first[10].mixed_classes and by_first[10].classes == ["a", "b"]
    assert not by_first[0].mixed_classes
    assert by_first[10].max_distance > by_first[10].mean_distance > 0  # 10 - 12 is the largest distance
    assert all(g.max_distance < 0.1 for g in groups if g.rows[0] != 10)


def test_threshold_zero_finds_only_exact_duplicates(indexed: Path):
    groups, _ = find_duplicates(load_index(indexed), threshold=0)
    assert group_rows(groups) == [[20, 21], [30, 31]]
    assert {g.kind for g in groups} == {EXACT}
    assert len(find_near(planted_features(), 0.0)) == 0


def test_far_apart_images_are_never_grouped():
    x = planted_features()
    pairs = find_near(x, 0.5)
    assert set(pairs.first) | set(pairs.second) <= PLANTED
    assert np.all(pairs.first < pairs.second) and np.all(pairs.distance < 0.5)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    expected = np.clip(1 - np.sum(unit[pairs.first] * unit[pairs.second], axis=1), 0, 2)
    np.testing.assert_allclose(pairs.distance, expected, atol=1e-5)


def test_range_search_runs_in_blocks(monkeypatch):
    calls = []
    original = faiss.IndexFlatIP.range_search

    def counted(self, x, radius, *args, **kwargs):
        calls.append(len(x))
        return original(self, x, radius, *args, **kwargs)

    monkeypatch.setattr(faiss.IndexFlatIP, "range_search", counted)
    x = planted_features()
    whole = find_near(x, 0.1)
    assert calls == [N]
    calls.clear()
    blocked = find_near(x, 0.1, block_size=7)
    assert calls == [7] * (N // 7) + [N % 7]
    for name in ("first", "second", "distance"):
        np.testing.assert_array_equal(getattr(blocked, name), getattr(whole, name))
    exact = find_exact(checksums())
    assert group_rows(group(x, blocked, exact)) == group_rows(group(x, whole, exact))


def test_a_grid_cell_folder_uses_its_datasets_feature_file(indexed: Path):
    cell = indexed.parents[1] / "lite" / "80-20" / "8"
    cell.mkdir(parents=True)
    assert locate_index(cell) == (indexed, indexed.parents[1] / "manifest.csv")
    (indexed.parents[1] / "other" / "80-20" / "8").mkdir(parents=True)
    with pytest.raises(DuplicatesError, match="no feature file"):
        locate_index(indexed.parents[1] / "other" / "80-20" / "8")


def test_csv_json_and_montage(indexed: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    code = main(["duplicates", str(indexed), "--threshold", "0.1", "--csv", str(out / "d.csv"),
                 "--json", str(out / "d.json"), "--montage", str(out / "d.png")])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "exact duplicates: 2 set(s)" in printed and "1 exact, 3 near" in printed and "11 images involved" in printed
    table = pd.read_csv(out / "d.csv")
    assert list(table.columns) == CSV_COLUMNS and len(table) == 11
    assert table.groupby("group")["size"].first().tolist() == [3, 3, 3, 2]
    chain = table[table["id"] == "b/011.png"].iloc[0]
    assert bool(chain["mixed_classes"]) and chain["class"] == "b" and chain["path"] == "images/011.png"
    payload = json.loads((out / "d.json").read_text())
    assert payload["threshold"] == 0.1 and payload["images"] == N and payload["images_involved"] == 11
    assert (payload["exact_sets"], payload["exact_groups"], payload["near_groups"]) == (2, 1, 3)
    exact_group = next(g for g in payload["groups"] if g["kind"] == EXACT)
    assert [i["id"] for i in exact_group["images"]] == ["a/030.png", "b/031.png"]
    assert len({i["sha256"] for i in exact_group["images"]}) == 1
    assert Image.open(out / "d.png").size[0] > 100


def test_json_to_stdout_keeps_the_summary_off_it(indexed: Path, capsys):
    assert main(["duplicates", str(indexed), "--json", "-"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["threshold"] == duplicates.DEFAULT_THRESHOLD
    assert "images involved" in captured.err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["missing.h5"], "does not exist"),
        (["{index}", "--threshold", "-0.1"], "not a cosine distance"),
        (["{index}", "--threshold", "nan"], "not a cosine distance"),
        (["{index}", "--montage-groups", "0"], "--montage-groups"),
    ],
)
def test_cli_errors_exit_2_with_a_message(indexed: Path, tmp_path: Path, capsys, arguments, message):
    arguments = [a.format(index=indexed) if "{" in a else str(tmp_path / a) if a.endswith(".h5") else a
                 for a in arguments]  # fmt: skip
    assert main(["duplicates", *arguments]) == 2
    error = capsys.readouterr().err
    assert error.startswith("cbir duplicates: error:") and message in error


def test_without_a_manifest_the_cli_exits_2(indexed: Path, capsys):
    (indexed.parents[1] / "manifest.csv").unlink()
    assert main(["duplicates", str(indexed)]) == 2
    assert "no manifest" in capsys.readouterr().err


def test_a_file_that_is_no_feature_file_exits_2(indexed: Path, capsys):
    indexed.write_text("not hdf5")
    assert main(["duplicates", str(indexed)]) == 2
    assert "cannot be read as a cbir feature file" in capsys.readouterr().err


def test_an_output_that_cannot_be_written_is_a_clear_error(indexed: Path, tmp_path: Path, capsys):
    from cbir.cli import main

    (tmp_path / "a_file").write_text("not a folder")
    code = main(["duplicates", str(indexed), "--csv", str(tmp_path / "a_file" / "out.csv")])
    assert code == 2
    assert "cannot write the results" in capsys.readouterr().err
