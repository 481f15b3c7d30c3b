"""A cell never looks finished to `cbir serve`'s file check while a run is writing it: the collection's `cbir index`
lock names a run (running, killed or failed), or Snakemake holds the folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cbir.serve.reload import cell_settled, unfinished_run


def searched_cell(root: Path) -> Path:
    """A labelled folder's searched cell as `cbir index` leaves it: models, no metrics (it is not evaluated)."""
    cell = root / "results/photos/efficientnet_lite0/all/original"
    cell.mkdir(parents=True)
    for name in ("projection.h5", "gallery.h5", "classifier.h5", "clusters_k3.h5"):
        (cell / name).write_bytes(b"")
    return cell


def test_a_cell_is_not_settled_while_its_collections_last_index_has_not_finished(tmp_path: Path):
    cell = searched_cell(tmp_path)
    assert unfinished_run(cell) is None and cell_settled(cell, None)
    lock = tmp_path / "results/photos/index.lock"
    for how in ("", "Terminated"):  # running or killed (it names the run), or failed (and says how)
        lock.write_text(json.dumps({"pid": 1, "host": "h", "started": "t", "command": "cbir index", "failed": how}))
        assert unfinished_run(cell) == f"the last cbir index of 'photos' has not finished ({lock})"
        assert not cell_settled(cell, None)
    lock.write_text("")  # the run finished
    assert cell_settled(cell, None)


def test_a_cell_is_not_settled_while_snakemake_holds_its_folder(tmp_path: Path):
    cell = searched_cell(tmp_path)
    locks = tmp_path / ".snakemake/locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("results/photos/efficientnet_lite0/all/original/gallery.h5\n")
    assert unfinished_run(cell) == f"a Snakemake run holds '{tmp_path.resolve()}'" and not cell_settled(cell, None)
    (locks / "0.output.lock").unlink()  # the run ended (or `snakemake --unlock` after a kill)
    assert cell_settled(cell, None)


def test_a_cell_copied_out_of_its_results_is_judged_by_its_files_alone(tmp_path: Path):
    cell = tmp_path / "model"
    cell.mkdir()
    (cell / "clusters_k3.h5").write_bytes(b"")
    (tmp_path / "index.lock").write_text("{}")
    assert unfinished_run(cell) is None and cell_settled(cell, None)


def test_a_collection_cell_without_a_classifier_settles_once_its_metrics_are_written(tmp_path: Path):
    cell = tmp_path / "results/photos/efficientnet_lite0/all/original"
    cell.mkdir(parents=True)
    for name in ("projection.h5", "gallery.h5", "clusters_k4.h5"):  # no classifier.h5: no labels
        (cell / name).write_bytes(b"")
        os.utime(cell / name, ns=(2_000_000_000, 2_000_000_000))
    (cell / "metrics_k4.json").write_text("{}")
    os.utime(cell / "metrics_k4.json", ns=(1_000_000_000, 1_000_000_000))
    assert not cell_settled(cell, None)  # the metrics are older than the gallery: still being rewritten
    os.utime(cell / "metrics_k4.json", ns=(3_000_000_000, 3_000_000_000))
    assert cell_settled(cell, None)
