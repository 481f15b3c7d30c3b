"""A full disk is one line naming the file and the space it needs, leaves no half-written file, and an update that
would not fit is refused before it changes anything. (The real small disk: tests/workflow/test_full_disk.py.)"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cbir import io
from cbir.io import DiskFullError, atomic_path, partial_paths, save_arrays
from cbir.pipeline import disk_space
from cbir.pipeline.disk_space import NoRoomError, check_room
from cbir.pipeline.progress import error_from_log


def test_a_write_that_runs_out_of_space_names_the_file_and_what_it_had_written(tmp_path: Path):
    target = tmp_path / "gallery.h5"
    with pytest.raises(DiskFullError) as full, atomic_path(target) as tmp:
        tmp.write_bytes(b"x" * 3_000_000)
        raise OSError(errno.ENOSPC, "No space left on device")
    message = str(full.value)
    assert message.startswith(f"no space left on the device for '{target}': it needs more than 3.0 MB and ")
    assert message.endswith("is free there; free some space and run the same command again")
    assert full.value.errno == errno.ENOSPC and isinstance(full.value, OSError)
    assert not target.exists() and not partial_paths(target)  # nothing half-written left, the space given back


def test_a_write_of_known_size_is_refused_before_it_starts_where_it_cannot_fit(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(io, "free_bytes", lambda folder: 1_000)
    with pytest.raises(DiskFullError, match=r"'.*features\.h5': it needs about 8\.0 MB and 1 kB is free there"):
        save_arrays(tmp_path / "features.h5", {"features": [[0.0] * 1000] * 1000})  # float64: 8 MB
    assert not list(tmp_path.iterdir())


def test_every_artifact_is_flushed_to_the_disk_before_it_is_renamed(tmp_path: Path, monkeypatch):
    synced: list[str] = []
    real = os.fsync
    monkeypatch.setattr(io.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    with atomic_path(tmp_path / "metrics.json") as tmp:
        tmp.write_text("{}")
    assert synced[0].startswith(str(tmp_path / ".metrics.json.partial-"))  # the file, under its temporary name
    assert synced[-1] == str(tmp_path)  # then the folder, holding the rename


FULL_STEP = """
import errno, sys
from types import SimpleNamespace
from cbir.io import atomic_path
from cbir.pipeline.steps import run_step

def step(smk):
    with atomic_path(sys.argv[1]) as tmp:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

run_step(SimpleNamespace(log=[sys.argv[2]], rule="project", wildcards={}, threads=1), step)
"""


def test_a_rule_step_stopped_by_a_full_disk_says_so_in_one_line_without_a_traceback(tmp_path: Path):
    target, log = tmp_path / "gallery.h5", tmp_path / "project.log"
    result = subprocess.run([sys.executable, "-c", FULL_STEP, str(target), str(log)], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr + log.read_text()
    error = error_from_log(log.read_text())  # what cbir index shows
    assert error.startswith(f"no space left on the device for '{target}': it needs more than 4 B")
    assert error.endswith("run the same command again")


def test_an_update_that_would_not_fit_is_refused_before_anything_is_written(tmp_path: Path, monkeypatch):
    folder = tmp_path / "results/photos"
    (folder / "cell").mkdir(parents=True)
    (folder / "manifest.csv").write_text("id,path\n" + "".join(f"{i}.png,/p/{i}.png\n" for i in range(10)))
    (folder / "cell/gallery.h5").write_bytes(b"g" * 2_000_000)
    needs, total = disk_space.update_needs(folder, 10, 20)
    assert total > 2_000_000 and needs > 2 * total + 2 * 2_000_000  # all of it anew, at twice the photos
    monkeypatch.setattr(disk_space, "free_bytes", lambda path: needs - 1)
    before = sorted((p, p.stat().st_mtime_ns) for p in folder.rglob("*"))
    with pytest.raises(NoRoomError) as refused:
        check_room(tmp_path, "photos", 20)
    assert str(refused.value).startswith(f"not enough space on the device for '{folder}': updating 'photos' needs ")
    assert "10 photo(s) then 20 file(s) now" in str(refused.value) and "nothing was changed" in str(refused.value)
    assert sorted((p, p.stat().st_mtime_ns) for p in folder.rglob("*")) == before
    monkeypatch.setattr(disk_space, "free_bytes", lambda path: needs)
    check_room(tmp_path, "photos", 20)  # room enough
    check_room(tmp_path, "new_name", 20)  # a first index has nothing to protect
