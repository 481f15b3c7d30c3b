"""One ``cbir index`` per collection: a second run is refused at once naming the first, a killed run's lock is taken
over with a message, and collections of other names do not wait for each other."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cbir.pipeline import lock as lock_module
from cbir.pipeline.lock import CollectionBusyError, LockHolder, collection_lock, read_holder

HOLDER = """
import sys, time
from cbir.pipeline.lock import collection_lock
with collection_lock(sys.argv[1], "'photos'", print):
    print("held", flush=True)
    time.sleep(120)
"""


def hold_in_another_process(path: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait(timeout=30)


def test_a_second_run_on_the_same_collection_is_refused_at_once_naming_the_first(tmp_path: Path):
    path = tmp_path / "results/photos/index.lock"
    first = hold_in_another_process(path)
    try:
        started = time.monotonic()
        with pytest.raises(CollectionBusyError) as refused, collection_lock(path, "'photos'", print):
            pytest.fail("the lock was taken twice")
        assert time.monotonic() - started < 5  # at once, not after a wait
        message = str(refused.value)
        assert message.startswith(f"'photos' is being indexed by another run (PID {first.pid} on ")
        assert f"kill {first.pid}" in message and f"delete {path}" in message and "cbir " in message
        assert read_holder(path).pid == first.pid  # the refused run left the lock as it was
    finally:
        stop(first)


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_message(tmp_path: Path):
    path = tmp_path / "index.lock"
    first = hold_in_another_process(path)
    first.send_signal(signal.SIGKILL)  # nothing can release it: the file still names the run
    first.wait(timeout=30)
    assert read_holder(path).pid == first.pid
    said: list[str] = []
    with collection_lock(path, "'photos'", said.append):
        assert read_holder(path).pid == os.getpid()
    assert len(said) == 1 and said[0].startswith(f"took over the lock of 'photos' ({path}) left by a run")
    assert f"PID {first.pid}" in said[0]
    assert path.read_text() == "" and read_holder(path) is None  # released: it names no one


def test_collections_of_other_names_do_not_wait_for_each_other(tmp_path: Path):
    first = hold_in_another_process(tmp_path / "results/one/index.lock")
    try:
        said: list[str] = []
        with collection_lock(tmp_path / "results/two/index.lock", "'two'", said.append):
            assert read_holder(tmp_path / "results/two/index.lock").pid == os.getpid()
        assert said == []
    finally:
        stop(first)


def test_without_flock_a_lock_is_taken_over_only_where_its_process_is_gone(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(lock_module, "_try_flock", lambda fd: None)  # a file system without flock
    path = tmp_path / "index.lock"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = LockHolder(int(dead.stdout), lock_module.socket.gethostname(), "2026-01-01 00:00:00", "cbir index x")
    path.write_text(lock_module.json.dumps(lock_module.asdict(gone)))
    said: list[str] = []
    with collection_lock(path, "'x'", said.append):
        pass
    assert said and f"PID {gone.pid}" in said[0]
    alive = LockHolder(os.getppid(), gone.host, gone.started, gone.command)  # the test runner's parent: running
    path.write_text(lock_module.json.dumps(lock_module.asdict(alive)))
    with pytest.raises(CollectionBusyError, match=f"PID {os.getppid()} on"), collection_lock(path, "'x'", print):
        pass
