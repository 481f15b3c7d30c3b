"""Fuzzing, the long run: the suite's fuzz tests with bounds raised, and the counts they reached.

Runs `tests/test_serve_fuzz.py` (schemathesis against `cbir serve`'s /openapi.json, with and
without a token) with ``--examples`` per operation and generation mode (the default 350 gives
well over 1,000 requests), and `tests/test_fuzz_inputs.py` (hypothesis on the upload decoding,
the manifest reader and the config validator) for ``--seconds`` per property. Prints the requests
or examples per target and the failures, and appends them to benchmarks/results/fuzz.jsonl. The
tests run the tiny workflow first (about a minute).

    python benchmarks/fuzz.py                        # 350 examples per operation, 120 s per input property
    python benchmarks/fuzz.py --examples 50 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, print_table, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=350, help="schemathesis examples per operation and mode")
    parser.add_argument("--seconds", type=float, default=120.0, help="seconds per input property (hypothesis)")
    parser.add_argument("--input-examples", type=int, default=500, help="hypothesis examples per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "fuzz.jsonl"
        env = {**os.environ, "CBIR_FUZZ_EXAMPLES": str(args.examples), "CBIR_FUZZ_SECONDS": str(args.seconds),
               "CBIR_FUZZ_INPUT_EXAMPLES": str(args.input_examples), "CBIR_FUZZ_REPORT": str(report)}  # fmt: skip
        started = time.monotonic()
        tests = ["tests/test_serve_fuzz.py", "tests/test_fuzz_inputs.py"]
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                                cwd=REPO, env=env, capture_output=True, text=True)  # fmt: skip
        elapsed = time.monotonic() - started
        lines = [json.loads(line) for line in report.read_text().splitlines()] if report.is_file() else []
    rows = []
    for line in lines:
        count = sum(line["requests"].values()) if "requests" in line else line["examples"]
        rows.append({"target": line["test"], "generated": count, "failures": len(line.get("failures", [])),
                     "seconds": line.get("seconds", "")})  # fmt: skip
    print(f"fuzz: {args.examples} examples per operation and mode, {args.seconds:g} s per input property, "
          f"{elapsed:.0f} s in all; pytest exit code {result.returncode}")  # fmt: skip
    print_table(rows, ["target", "generated", "failures", "seconds"])
    api = sum(r["generated"] for r in rows if r["target"].startswith("schemathesis"))
    print(f"schemathesis requests in all: {api}")
    if result.returncode != 0:
        print(result.stdout[-6000:])
    record("fuzz", rows, settings=vars(args), pytest_exit_code=result.returncode, elapsed_s=elapsed,
           details=lines)  # fmt: skip
    sys.exit(result.returncode)


if __name__ == "__main__":
    main()
