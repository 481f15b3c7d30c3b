"""``cbir index`` on a phone or NAS export: what is no photo is ignored (ignored.csv), and the run does not stop."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from cbir.data.manifest import read_manifest

from helpers import SMALL_BACKBONE, run_cbir
from photo_export import EXCLUDED, IGNORED, IGNORED_FOLDERS, N_PHOTOS, make_photo_export


@pytest.mark.workflow
def test_a_photo_export_is_indexed_with_its_other_files_ignored(tmp_path: Path):
    make_photo_export(tmp_path / "Photos")
    options = ["--cores", "2", "--engine", "torch", "--precision", "fp32", *SMALL_BACKBONE]
    result = run_cbir("index", "Photos", *options, cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    # a date folder beside Dups: a photo library, not classes
    assert "labels: none" in result.stderr
    dataset = tmp_path / "results" / "Photos"
    assert len(read_manifest(dataset / "manifest.csv")) == N_PHOTOS
    excluded = pd.read_csv(dataset / "excluded.csv")
    assert sorted(excluded["path"]) == sorted(str((tmp_path / "Photos" / path).resolve()) for path in EXCLUDED)
    ignored = pd.read_csv(dataset / "ignored.csv", keep_default_na=False)
    expected = Counter(IGNORED.values())
    for kind, files in IGNORED_FOLDERS.values():
        expected[kind] += files
    assert ignored.groupby("kind")["files"].sum().to_dict() == dict(expected)
    assert ("2024/06", "video", 1, "IMG_0100.MOV") in set(ignored.itertuples(index=False, name=None))
    log = (tmp_path / "results" / "logs" / "manifest" / "Photos.log").read_text()
    assert "ignored, as no photos: 4 os_file, 4 system_folder" in log
    assert "2 file(s) excluded (10.0% of the files, limit 0.2)" in log
