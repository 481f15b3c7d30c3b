"""What a stopped run left missing is put back from the last finished run, dated 1970 so that Snakemake rebuilds it:
by a failed run itself, by the run after a killed one; a finished run drops the links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cbir.pipeline.previous import PREVIOUS, TAKEN, previous_kept, taken


def collection(tmp_path: Path) -> Path:
    folder = tmp_path / "results/photos"
    files = {"manifest.csv": "old", "lite/all/original/gallery.h5": "old", "lite/all/original/projection.h5": "old",
             "index.log": "log"}  # fmt: skip
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def rewrite(path: Path, text: str) -> None:
    """As a job does: Snakemake removes the old output when the job starts; the job renames the new one in."""
    path.unlink()
    path.with_name("new").write_text(text)
    path.with_name("new").rename(path)


def test_a_failed_run_puts_back_what_it_left_missing_and_keeps_what_it_finished(tmp_path: Path):
    folder = collection(tmp_path)
    gallery = folder / "lite/all/original/gallery.h5"
    with pytest.raises(RuntimeError, match="disk full"), previous_kept(folder, print):
        rewrite(folder / "manifest.csv", "new")  # a job that finished
        gallery.unlink()  # the job that failed: Snakemake removed its old output
        (folder / "index.log").write_text("the failed run's log")
        raise RuntimeError("disk full")
    assert gallery.read_text() == "old" and gallery.stat().st_mtime_ns == 0  # there, and rebuilt by the next run
    assert (folder / "manifest.csv").read_text() == "new"  # what the failed run finished stays
    assert (folder / "index.log").read_text() == "the failed run's log"  # the run's own
    assert taken(folder)  # until a run finishes


def test_the_run_after_a_killed_one_puts_back_the_files_it_left_missing_as_they_were(tmp_path: Path):
    folder = collection(tmp_path)
    gallery = folder / "lite/all/original/gallery.h5"
    kept = previous_kept(folder, print)
    kept.__enter__()  # a run that is killed: it never leaves the block
    rewrite(folder / "lite/all/original/projection.h5", "new")  # a job that finished
    gallery.unlink()  # killed while its job ran
    (folder / "manifest.csv").unlink()  # and while the manifest was rebuilt: only its rule knows what changed
    said: list[str] = []
    with previous_kept(folder, said.append):
        assert gallery.read_text() == "old" and gallery.stat().st_mtime_ns == 0  # there, and to be rebuilt
        assert not (folder / "manifest.csv").exists()  # its rule follows the folder by a parameter: rebuilt
        assert (folder / "lite/all/original/projection.h5").read_text() == "new"  # what the killed run finished
        assert said == ["put back 1 file(s) an interrupted run had removed, as last finished"]
        assert taken(folder)  # the finished state is kept until a run finishes
    assert not (folder / PREVIOUS).exists()


def test_a_snapshot_cut_short_is_taken_again(tmp_path: Path):
    folder = collection(tmp_path)
    (folder / PREVIOUS / "manifest.csv").parent.mkdir(parents=True)
    os.link(folder / "manifest.csv", folder / PREVIOUS / "manifest.csv")  # killed before the gallery and the mark
    assert not taken(folder)
    with pytest.raises(RuntimeError), previous_kept(folder, print):
        assert (folder / PREVIOUS / TAKEN).is_file() and (folder / PREVIOUS / "lite/all/original/gallery.h5").is_file()
        (folder / "lite/all/original/gallery.h5").unlink()
        raise RuntimeError("failed")
    assert (folder / "lite/all/original/gallery.h5").read_text() == "old"
