"""The rule scripts' runner: a job's thread budget reaches the libraries it loads later."""

import os
import subprocess
import sys

import pytest

JOB = """
import types
from cbir.pipeline.steps import run_step

def step(smk):
    import faiss  # loaded after the runner started, as the evaluation loads it
    print(faiss.omp_get_max_threads())

smk = types.SimpleNamespace(threads=1, log=[], rule="evaluate", wildcards={}, config={})
run_step(smk, step)
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: every OpenMP runtime starts with one thread")
def test_an_openmp_runtime_loaded_during_a_job_keeps_to_its_threads():
    environment = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    result = subprocess.run([sys.executable, "-c", JOB], capture_output=True, text=True, env=environment, check=True)
    assert result.stdout.strip().splitlines()[-1] == "1"
