"""grid.measure chosen (what ``cbir index`` runs): every PCA size is validated, and only the one validation chose is
fitted further and measured on the test split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cbir.fitting.chosen import read_selection
from cbir.layout import CLASSIFIER, SELECTION, metrics_name
from cbir.search.cell import chosen_cell

from helpers import make_image_folder, planned_jobs, run_snakemake, tiny_config, write_config


@pytest.mark.workflow
def test_only_the_pca_size_validation_chose_is_fitted_further_and_measured(tmp_path: Path):
    config = tiny_config(make_image_folder(tmp_path / "data" / "tiny", per_class=10), measure="chosen")
    config["grid"]["embeddings"] = ["raw", "l2"]
    result = run_snakemake(tmp_path, write_config(tmp_path / "config.yaml", config), "all_but_summary")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    split = tmp_path / "results/tiny/lite/80-20"
    cells = [split / pca for pca in ("4", "8", "original")]
    record = json.loads((split / "chosen_pca.json").read_text())
    chosen = chosen_cell(cells)
    assert record["pca"] == chosen.name
    scores = {cell.name: read_selection(cell).score() for cell in cells}
    assert record["validation_scores"] == pytest.approx(scores)
    assert scores[chosen.name] == max(scores.values())
    for cell in cells:
        assert (cell / SELECTION).is_file()  # every size validated
        measured = cell == chosen
        assert (cell / CLASSIFIER).is_file() == measured, cell.name
        assert (cell / metrics_name(2)).is_file() == measured, cell.name
        assert (cell / metrics_name(2, "l2")).is_file() == measured, cell.name
    assert (tmp_path / "results/summary/montages/tiny/lite.png").is_file()  # drawn from the chosen cell
    assert not (tmp_path / "results/summary/metrics.csv").exists()

    # nothing left to do; the target all still measures every cell
    again = run_snakemake(tmp_path, tmp_path / "config.yaml", "all_but_summary", "--dry-run")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    everything = run_snakemake(tmp_path, tmp_path / "config.yaml", "--dry-run")
    assert everything.returncode == 0 and planned_jobs(everything)["evaluate"] == 2  # the two sizes not chosen
