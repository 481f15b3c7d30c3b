"""A full disk, on a small file system made for the test: a size-limited tmpfs (mounting one needs root; the tests
are skipped with the reason where it is not allowed). The workflow and ``cbir index`` stop with one line naming the
path and the space needed, no traceback; the previous index stays whole and ``cbir serve`` goes on answering from
it; the same command succeeds once space is freed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import SMALL_BACKBONE, make_image_folder, new_image, run_cbir, run_snakemake, tiny_config, write_config

pytestmark = pytest.mark.workflow
SIZE = "48m"
LEAVE_FOR_THE_WORKFLOW = 400_000  # room for the first stages, not for all of them
OPTIONS = ["--cores", "2", "--engine", "torch", "--precision", "fp32", "--labels", "none", *SMALL_BACKBONE]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a small file system for the test is a tmpfs mounted with `mount -t tmpfs -o size=...`: needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(folder)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """A file taking all the free space of ``disk`` but ``leave`` bytes."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        while (free := shutil.disk_usage(disk).free) > leave:
            f.write(b"\0" * min(1 << 20, free - leave))
            f.flush()
    return filler


def one_error_line(result: subprocess.CompletedProcess, prefix: str) -> str:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith(prefix)]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


class Served:
    """A running ``cbir serve`` of a cell, asked through its JSON API."""

    def __init__(self, cell: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.url = f"http://127.0.0.1:{s.getsockname()[1]}"
        command = [sys.executable, "-m", "cbir.cli", "serve", "--model", str(cell), "--port", self.url.rsplit(":")[-1],
                   "--reload-interval", "0.5", "--threads", "1", "--log-level", "warning"]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while self.model() is None:
            assert self.process.poll() is None and time.monotonic() < deadline, self.process.communicate()[1][-3000:]
            time.sleep(0.2)

    def model(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"{self.url}/api/model", timeout=30) as response:
                return json.loads(response.read())
        except OSError:
            return None

    def ask(self, gallery_id: str) -> list:
        data = urllib.parse.urlencode({"gallery_id": gallery_id}).encode()
        with urllib.request.urlopen(f"{self.url}/api/query", data=data, timeout=60) as response:
            results = json.loads(response.read())["results"]
        return [(mode, [(tile["id"], tile["distance"]) for tile in tiles]) for mode, tiles in sorted(results.items())]

    def stop(self) -> str:
        self.process.send_signal(signal.SIGINT)
        return self.process.communicate(timeout=60)[1]


def test_cbir_index_refuses_an_update_the_disk_cannot_hold_and_keeps_serving_the_previous_index(small_disk, tmp_path):
    photos = make_image_folder(tmp_path / "photos", per_class=6)  # the photos elsewhere: results/ on the small disk
    first = run_cbir("index", str(photos), "--workdir", str(small_disk), *OPTIONS, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    cell = small_disk / "results/photos/efficientnet_lite0/all/original"
    before = {path.name: path.read_bytes() for path in cell.iterdir()}
    server = Served(cell)
    try:
        answer = server.ask("red/000.png")
        for i in range(2):  # 20 photos: the collection keeps its k (about the square root of its size)
            new_image(photos / "green" / f"added_{i}.png", i)
        filler = fill(small_disk, leave=300_000)

        full = run_cbir("index", str(photos), "--workdir", str(small_disk), *OPTIONS, cwd=tmp_path)
        assert full.returncode == 2
        error = one_error_line(full, "cbir index: error:")
        folder = small_disk / "results/photos"
        assert f"not enough space on the device for '{folder}': updating 'photos' needs about " in error
        assert re.search(r"about \d+\.\d MB \(.*18 photo\(s\) then 20 file\(s\) now\) and 0\.\d MB is free", error)
        assert error.endswith("nothing was changed: free some space and run the same command again")
        assert {path.name: path.read_bytes() for path in cell.iterdir()} == before  # the previous index, whole
        assert server.ask("red/000.png") == answer and server.model()["gallery_size"] == 18

        filler.unlink()
        freed = run_cbir("index", str(photos), "--workdir", str(small_disk), *OPTIONS, cwd=tmp_path)
        assert freed.returncode == 0, freed.stderr[-3000:]
        assert "2 photo(s) extracted, 18 from the feature cache" in freed.stderr
        deadline = time.monotonic() + 60  # the running server takes the updated cell once it has settled
        while server.model()["gallery_size"] != 20 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert server.model()["gallery_size"] == 20
    finally:
        server.stop()


def test_the_workflow_stops_at_the_file_the_disk_cannot_hold_and_finishes_once_space_is_freed(small_disk, tmp_path):
    data = make_image_folder(tmp_path / "data" / "tiny", per_class=6)
    config = tiny_config(data, pca=[4], embeddings=["raw"])
    config["extraction"]["shard_size"] = 18
    config_path = write_config(tmp_path / "config.yaml", config)
    filler = fill(small_disk, leave=LEAVE_FOR_THE_WORKFLOW)
    full = run_snakemake(small_disk, config_path)
    assert full.returncode != 0
    output = full.stdout + full.stderr
    told = re.compile(r"no space left on the device for '(?P<path>[^']+)': it needs (about|more than) [\d.]+ [kM]?B "
                      r"and [\d.]+ [kM]?B is free there; free some space and run the same command again")  # fmt: skip
    match = told.search(output)
    assert match, output[-4000:]
    assert Path(match["path"]).is_relative_to(small_disk) or not Path(match["path"]).is_absolute()
    assert not list(small_disk.rglob("*.partial-*"))  # nothing half-written left
    filler.unlink()
    again = run_snakemake(small_disk, config_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (small_disk / "results/tiny/lite/80-20/4/metrics_k2.json").is_file()
