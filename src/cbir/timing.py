"""Latency measurement: monotonic high-resolution clock, median and p95 per step."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

clock = time.perf_counter_ns


def latency_summary(samples_ns: Sequence[int] | np.ndarray) -> dict[str, float]:
    micro = np.asarray(samples_ns, dtype=np.float64) / 1e3
    if micro.size == 0:
        return {"median_us": float("nan"), "p95_us": float("nan")}
    return {"median_us": float(np.median(micro)), "p95_us": float(np.percentile(micro, 95))}


def time_query_extraction(
    paths: Sequence[str],
    backbone: dict[str, Any],
    *,
    batch_size: int = 32,
    device: str = "auto",
    precision: str = "auto",
    seed: int = 0,
) -> dict[str, Any]:
    """Time a query image's trip through the backbone: decode + preprocess + forward.

    One image at a time (what a user's query costs, after one warm-up), then the same images
    as one batch (per image). The network is loaded once, outside the timings.
    """
    import torch

    from cbir.data import load_rgb_image
    from cbir.features import (
        BackboneSpec,
        autocast,
        build_backbone,
        preprocessing,
        resolve_device,
        resolve_precision,
    )

    spec = BackboneSpec.from_config(backbone)
    network = build_backbone(spec, seed=seed)
    torch_device = resolve_device(device)
    precision = resolve_precision(precision, torch_device)
    network = network.to(torch_device, memory_format=torch.channels_last)
    transform = preprocessing(spec, network)

    def embed(batch_paths: Sequence[str]) -> np.ndarray:
        images = torch.stack([transform(load_rgb_image(p)) for p in batch_paths])
        images = images.to(torch_device, memory_format=torch.channels_last)
        out = network(images).float().cpu().numpy()
        if torch_device.type == "cuda":
            torch.cuda.synchronize()
        return out

    single_ns = []
    with torch.inference_mode(), autocast(precision, torch_device):
        embed(paths[:1])  # warm-up: first-call allocations and kernel selection
        for path in paths:
            start = clock()
            embed([path])
            single_ns.append(clock() - start)
        start = clock()
        for first in range(0, len(paths), batch_size):
            embed(paths[first : first + batch_size])
        batched_us = (clock() - start) / 1e3 / max(len(paths), 1)
    summary = latency_summary(single_ns)
    return {
        "n_images": len(paths),
        "device": str(torch_device),
        "precision": precision,
        "time_extract_median_us": summary["median_us"],
        "time_extract_p95_us": summary["p95_us"],
        "time_batched_extract_us_per_query": batched_us,
    }
