"""Latency measurement: monotonic high-resolution clock, median and p95 per step, and the hardware it ran on."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cbir.hardware import cpu_hardware

if TYPE_CHECKING:
    from cbir.extraction.network import PreparedNetwork

clock = time.perf_counter_ns


def latency_summary(samples_ns: Sequence[int] | np.ndarray) -> dict[str, float]:
    micro = np.asarray(samples_ns, dtype=np.float64) / 1e3
    if micro.size == 0:
        return {"median_us": float("nan"), "p95_us": float("nan")}
    return {"median_us": float(np.median(micro)), "p95_us": float(np.percentile(micro, 95))}


def time_query_extraction(paths: Sequence[str], prepared: PreparedNetwork, *, batch_size: int = 32) -> dict[str, Any]:
    """Time a query image's trip through the prepared network: decode + preprocess + forward.

    One image at a time (what a user's query costs, after one warm-up), then the same images
    as one batch (per image). The network is prepared once, outside the timings, exactly as
    ``cbir query`` and ``cbir serve`` prepare it.
    """
    import torch  # torch on first use: the evaluation imports this module for its clock

    def embed(batch_paths: Sequence[str]) -> np.ndarray:
        return prepared.embed(torch.stack([prepared.preprocess(prepared.decode(p)) for p in batch_paths]))

    embed(paths[:1])  # warm-up: first-call allocations and kernel selection
    single_ns = []
    for path in paths:
        start = clock()
        embed([path])
        single_ns.append(clock() - start)
    start = clock()
    for first in range(0, len(paths), batch_size):
        embed(paths[first : first + batch_size])
    batched_us = (clock() - start) / 1e3 / max(len(paths), 1)
    summary = latency_summary(single_ns)
    if prepared.device.type == "cuda":
        hardware = torch.cuda.get_device_name(prepared.device)
    else:
        threads = torch.get_num_threads()
        hardware = f"{cpu_hardware()}, {threads} thread{'s' if threads > 1 else ''}"
    return {
        "n_images": len(paths),
        "device": str(prepared.device),
        "hardware": hardware,
        "precision": prepared.precision,
        "precision_reason": prepared.precision_reason,
        "time_extract_median_us": summary["median_us"],
        "time_extract_p95_us": summary["p95_us"],
        "time_batched_extract_us_per_query": batched_us,
    }
