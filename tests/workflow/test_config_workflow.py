from pathlib import Path

import pytest

from helpers import make_image_folder, run_snakemake, tiny_config, write_config

# --- every key of the schema, given a wrong value -----------------------------------------


@pytest.mark.workflow
def test_a_pca_size_above_the_training_set_stops_before_any_job(tmp_path: Path):
    data = make_image_folder(tmp_path / "data" / "tiny", per_class=3)
    config = tiny_config(data, pca=[4, 8, "original"])
    result = run_snakemake(tmp_path, write_config(tmp_path / "config.yaml", config), "-n")
    assert result.returncode != 0
    output = result.stdout + result.stderr  # a dry run reports on stdout
    assert "config key 'grid.pca[1]': 8 is larger than the training set of dataset 'tiny' at split 80-20: " \
           "at most 6 images" in output  # fmt: skip
    assert "grid.pca[0]" not in output
    assert not (tmp_path / "results").exists()
