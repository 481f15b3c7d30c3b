"""One table of a ``gpu_check.sh`` run: each check's figures, the device each ran on, and each step's status.

Reads the result lines that the run appended to benchmarks/results/<name>.jsonl (those stamped at or
after ``--since``, the run's start in ``record``'s format; without it the last line of each) for
``extract`` (extraction with each decoder), ``serve`` (a whole query's latency), ``eval_scale`` (the
evaluation at 70,000 images), ``finetune`` and ``precision``; ``--timing``: a cell's
``features/<backbone>.timing.json`` (a query image through the network alone); ``--steps``: the
steps' statuses, one ``name<TAB>status<TAB>seconds<TAB>limit`` line each (status: the exit code,
``absent`` or ``skipped``), as gpu_check.sh writes them. A check without a result prints a
``missing`` row (with its step's status) rather than stopping the table.

    python benchmarks/gpu_table.py                                        # the last line of each
    python benchmarks/gpu_table.py --since 2026-12-05T14:00:00 --steps /tmp/steps.tsv --timing t.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from _common import RESULTS, print_table

# (check, the benchmark's result file, gpu_check.sh's step): in the order of the table
CHECKS = [
    ("extraction", "extract", "extraction"),
    ("query latency", "serve", "query latency"),
    ("fine-tuning", "finetune", "fine-tuning"),
    ("evaluation 70k", "eval_scale", "evaluation 70k"),
    ("precision", "precision", "precision"),
]
COLUMNS = ["check", "setting", "figure", "value", "device"]
EXIT_TIMEOUT = {"124", "137"}  # timeout(1): the step ran past its limit (137: killed after the grace)


def num(value: Any, digits: int = 3) -> str:
    """A number to ``digits`` significant digits (whole above 1000); anything else as it is."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.{digits}g}"


def read_lines(name: str, since: str | None) -> list[dict]:
    """The records of benchmarks/results/<name>.jsonl stamped at or after ``since`` (else the last one)."""
    path = RESULTS / f"{name}.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if since is None:
        return records[-1:]
    return [r for r in records if isinstance(r, dict) and str(r.get("time", "")) >= since]


def gpu_or_cpu(record: dict, on_gpu: bool) -> str:
    """The GPU's name (the record's machine) where the row ran on CUDA, else ``cpu``."""
    device = (record.get("machine") or {}).get("device") or "cpu"
    return device if on_gpu and device != "cpu" else "cpu"


def wants_cuda(record: dict) -> bool:
    """Whether the benchmark ran with ``--device cuda`` (or ``auto`` on a machine with a GPU)."""
    device = str((record.get("settings") or {}).get("device", "auto"))
    return device.startswith("cuda") or (device == "auto" and gpu_or_cpu(record, True) != "cpu")


def extract_rows(record: dict) -> list[dict]:
    settings = record.get("settings") or {}
    check = f"extraction ({settings.get('arch', '?')}, {settings.get('images', '?')} JPEGs)"
    out = []
    for row in record.get("rows", []):
        method = row.get("method", "?")
        parts = [f"{num(row['images_per_s'])} img/s"] if "images_per_s" in row else []
        if "steady_images_per_s" in row:
            parts.append(f"steady {num(row['steady_images_per_s'])}/s")
        if "ratio_vs_baseline" in row:
            parts.append(f"{num(row['ratio_vs_baseline'])}x baseline")
        if "cosine_to_pillow" in row:
            parts.append(f"cosine to Pillow {row['cosine_to_pillow']:.4f} (min {row.get('cosine_min', 0):.4f})")
        if "gpu_peak_mb" in row:
            parts.append(f"GPU peak {num(row['gpu_peak_mb'])} MB")
        on_gpu = wants_cuda(record) and method != "decode"  # decode: Pillow in CPU workers
        out.append({"check": check, "setting": f"{method} ({row.get('precision', '?')})", "figure": "throughput",
                    "value": ", ".join(parts) or "no figures", "device": gpu_or_cpu(record, on_gpu)})  # fmt: skip
    done = {row.get("method") for row in record.get("rows", [])}
    for method in expected_methods(settings):
        if method not in done:  # extract.py leaves out a method whose process failed (its stderr in the log)
            out.append({"check": check, "setting": method, "figure": "throughput",
                        "value": "missing: it failed (extract.py's stderr in the log)", "device": "-"})  # fmt: skip
    return out


def expected_methods(settings: dict) -> list[str]:
    """The methods extract.py runs with these settings (the torch ones: OpenVINO and large photos left out)."""
    words = {key: [w for w in str(settings.get(key, "")).split(",") if w] for key in ("precisions", "extra")}
    words["decoders"] = [w for w in str(settings.get("decoders", "pillow")).split(",") if w]
    methods = ["baseline", *[f"engine-{p}" for p in words["precisions"]]]
    if "memory" in words["extra"]:
        methods += [f"memory-{p}" for p in dict.fromkeys(["fp32", *words["precisions"]])]
    if "device" in words["decoders"]:
        methods += [f"devengine-{p}" for p in words["precisions"]]
    if "decode" in words["extra"]:
        methods += [m for m, d in (("decode", "pillow"), ("devdecode", "device")) if d in words["decoders"]]
    return methods


def serve_rows(record: dict) -> list[dict]:
    model = Path(str((record.get("settings") or {}).get("model", "?")))  # .../<dataset>/<backbone>/<split>/<pca>
    check = f"query latency ({model.parts[-3] if len(model.parts) >= 3 else model})"
    out = []
    for row in record.get("rows", []):
        value = f"{num(row.get('median_ms', float('nan')))} / {num(row.get('p95_ms', float('nan')))} ms"
        if "server_total_median_ms" in row:
            value += f" (server's own total {num(row['server_total_median_ms'])} ms)"
        out.append({"check": check, "setting": f"{row.get('path', '?')}, {row.get('requests', '?')} queries",
                    "figure": "median / p95", "value": value, "device": gpu_or_cpu(record, True)})  # fmt: skip
    if "ratio_median" in record:
        out.append({"check": check, "setting": "API / in-process", "figure": "median ratio",
                    "value": num(record["ratio_median"]), "device": gpu_or_cpu(record, True)})  # fmt: skip
    return out


def timing_rows(path: Path) -> list[dict]:
    """A query image through the network alone, from the cell's extraction timing (the workflow's)."""
    try:
        timing = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        return [{"check": "query latency", "setting": "network alone", "figure": "-", "value": f"missing ({error})",
                 "device": "-"}]  # fmt: skip
    median, p95 = timing.get("time_extract_median_us", float("nan")), timing.get("time_extract_p95_us", float("nan"))
    batched = timing.get("time_batched_extract_us_per_query", float("nan"))
    setting = f"network alone: decode + forward, {timing.get('n_images', '?')} images ({timing.get('precision', '?')})"
    value = f"{num(median / 1e3)} / {num(p95 / 1e3)} ms; batched {num(batched / 1e3)} ms/image"
    device = timing.get("hardware") if timing.get("device", "cpu") != "cpu" else "cpu"
    return [{"check": "query latency", "setting": setting, "figure": "median / p95", "value": value,
             "device": device or "?"}]  # fmt: skip


def eval_rows(record: dict) -> list[dict]:
    rows = record.get("rows", [])
    settings = record.get("settings") or {}
    gallery = rows[0].get("gallery", "?") if rows else "?"
    check = f"evaluation {num(settings.get('n', '?'))} images (gallery {gallery})"
    out = []
    for row in rows:
        value = (f"{num(row.get('seconds', float('nan')))} s, {num(row.get('queries_per_s', float('nan')))} q/s, "
                 f"{num(row.get('time_vs_cpu_bounded', float('nan')))}x cpu bounded's time; "
                 f"mAP {row.get('map', float('nan')):.4f} ± {row.get('map_ci95', float('nan')):.4f}, "
                 f"P@10 {row.get('precision_at_10', float('nan')):.4f}")  # fmt: skip
        if "map_diff_vs_full" in row:
            value += f"; mAP - full {row['map_diff_vs_full']:+.4f}"
        if "ap_max_diff_vs_cpu" in row:
            value += f"; AP vs CPU max |diff| {num(row['ap_max_diff_vs_cpu'])}"
        out.append({"check": check, "setting": f"{row.get('row', '?')}, {row.get('queries', '?')} queries",
                    "figure": "time; mAP; P@10", "value": value,
                    "device": gpu_or_cpu(record, row.get("device") == "cuda")})  # fmt: skip
    return out


def precision_rows(record: dict) -> list[dict]:
    settings = record.get("settings") or {}
    check = f"precision ({Path(str(settings.get('folder', '?'))).name}, {settings.get('arch', '?')})"
    out = []
    for row in record.get("rows", []):
        path = str(row.get("path", "?"))
        parts = [f"{num(row['images_per_s'])} img/s"] if "images_per_s" in row else []
        parts += [f"acc {num(row.get('accuracy_pct', float('nan')))} %, mAP {num(row.get('map_global_pct', 0))} %"]
        if "mean_cosine_vs_fp32" in row:
            parts.append(f"cosine {row['mean_cosine_vs_fp32']:.4f}, acc {row.get('accuracy_diff_points', 0):+.2f} pt, "
                         f"mAP {row.get('map_diff_points', 0):+.2f} pt: {row.get('quality_bar', '?')}")  # fmt: skip
        on_gpu = wants_cuda(record) and path.startswith("torch")
        out.append({"check": check, "setting": path, "figure": "speed; quality vs fp32", "value": ", ".join(parts),
                    "device": gpu_or_cpu(record, on_gpu)})  # fmt: skip
    return out


def generic_rows(check: str, record: dict) -> list[dict]:
    """Any benchmark's rows (fine-tuning's format is its own): the first text as the setting, the numbers."""
    out = []
    for row in record.get("rows", []):
        texts = [str(v) for v in row.values() if isinstance(v, str)]
        numbers = [f"{k} {num(v)}" for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)]
        out.append({"check": check, "setting": texts[0] if texts else "-", "figure": "figures",
                    "value": ", ".join(numbers[:8]) or "no figures",
                    "device": gpu_or_cpu(record, wants_cuda(record))})  # fmt: skip
    return out


BUILDERS = {"extract": extract_rows, "serve": serve_rows, "eval_scale": eval_rows, "precision": precision_rows}


def record_rows(check: str, builder: Any, record: dict) -> list[dict]:
    """``builder``'s rows of ``record``; where that fails, row by row, a row that cannot be read named as such."""
    failures = (AttributeError, KeyError, TypeError, ValueError)
    try:
        return builder(record)
    except failures:
        pass
    out = []
    for i, row in enumerate(record.get("rows") or [None]):
        try:
            out += builder({**record, "rows": [row]})
        except failures as error:
            out.append({"check": check, "setting": "-", "figure": "-", "device": "-",
                        "value": f"unreadable row {i} of {record.get('time', '?')}: {error!r}"})  # fmt: skip
    return out


def read_steps(path: Path | None) -> dict[str, dict[str, str]]:
    steps: dict[str, dict[str, str]] = {}
    if path is None or not path.is_file():
        return steps
    for line in path.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2:
            steps[fields[0]] = {"status": fields[1], "seconds": (fields[2:3] or ["?"])[0],
                                "limit": (fields[3:4] or ["?"])[0]}  # fmt: skip
    return steps


def describe_step(step: dict[str, str] | None) -> str:
    if step is None:
        return "not run"
    status, seconds, limit = step["status"], step["seconds"], step["limit"]
    if status == "0":
        return f"ok in {seconds} s (limit {limit} s)"
    if status == "absent":
        return "not built yet"
    if status == "skipped":
        return f"skipped ({limit})"
    if status in EXIT_TIMEOUT:
        return f"TIMED OUT after {seconds} s (limit {limit} s)"
    return f"FAILED: exit {status} after {seconds} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--since", help="the run's start, e.g. 2026-12-05T14:00:00 (default: the last line of each)")
    parser.add_argument("--steps", type=Path, help="the steps' statuses, as gpu_check.sh writes them")
    parser.add_argument("--timing", type=Path, help="a cell's features/<backbone>.timing.json (query network)")
    args = parser.parse_args()

    steps = read_steps(args.steps)
    rows: list[dict] = []
    machines: dict[str, dict] = {}
    for check, name, step_name in CHECKS:
        step = steps.get(step_name)
        records = read_lines(name, args.since)
        if not records:
            status = describe_step(step) if step or args.steps else "no result"
            value = status if step and step["status"] in ("absent", "skipped") else f"missing: {status}"
            rows.append({"check": check, "setting": "-", "figure": "-", "value": value, "device": "-"})
        for record in records:
            machines.setdefault(json.dumps(record.get("machine", {}), sort_keys=True), record.get("machine", {}))
            rows += record_rows(check, BUILDERS.get(name, lambda r, c=check: generic_rows(c, r)), record)
        if name == "serve" and args.timing is not None:
            rows += timing_rows(args.timing)
    for name, step in steps.items():
        rows.append({"check": f"step: {name}", "setting": "-", "figure": "status", "value": describe_step(step),
                     "device": "-"})  # fmt: skip
    for machine in machines.values():
        print(f"machine: {machine.get('device', '?')}; CPU {machine.get('cpu', '?')} ({machine.get('cores', '?')} "
              f"cores); torch {machine.get('torch', '?')}, Python {machine.get('python', '?')}")  # fmt: skip
    print_table(rows, COLUMNS)


if __name__ == "__main__":
    main()
