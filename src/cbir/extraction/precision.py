"""Compute precision: which precisions a device offers, and what ``precision: auto`` picks there.

``auto`` picks a reduced precision only where a short timed trial on this machine and backbone
measured it faster than fp32 by more than :data:`MARGIN` (noise). CPU flags only rule bf16 out
(no AVX-512 BF16 or AMX: emulated, never faster); they never rule it in, since AVX-512 BF16
without AMX can be slower than fp32. The trial's outcome is cached per machine, torch version,
thread count and backbone, so every shard and rerun on one machine makes the same choice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cbir.hardware import cpu_description, cpu_may_have_fast_bf16
from cbir.io import atomic_path

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# a reduced precision must be this much faster than fp32 in the trial to be chosen
MARGIN = 1.10
TRIAL_ROUNDS = 3
# The cosine between features of one image in fp32 and in a reduced precision to expect, when a
# query cannot run in its gallery's precision and runs in fp32: bf16 from benchmarks/precision.py
# on Corel-1K (mean 0.999, docs "Measured"; the bound leaves room for other images); fp16 keeps
# 3 more mantissa bits than bf16, so its rounding error is about 8x smaller (not yet measured on
# a GPU here: benchmarks/gpu_check.sh does).
EXPECTED_COSINE_TO_FP32 = {"fp32": 1.0, "bf16": 0.995, "fp16": 0.9999, "int8": 0.99}  # int8: the engine's bar
CACHE_FILE = "precision-trials.json"


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str
    reason: str
    images_per_s: dict[str, float] = field(default_factory=dict)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return cpu_description()


def offered_precisions(device: torch.device) -> tuple[str, ...]:
    """The precisions this device computes natively: CPUs have no fp16 arithmetic (only emulated)."""
    if device.type == "cuda":
        return ("fp32", "fp16", "bf16") if torch.cuda.is_bf16_supported() else ("fp32", "fp16")
    return ("fp32", "bf16")


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The autocast context of a resolved precision (fp32: disabled)."""
    return torch.autocast(device.type, dtype=PRECISIONS[precision], enabled=precision != "fp32")


def cache_path() -> Path:
    """Where trial outcomes are kept: $CBIR_CACHE_DIR, else $XDG_CACHE_HOME/cbir, else ~/.cache/cbir."""
    root = os.environ.get("CBIR_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cbir"
    return Path(root) / CACHE_FILE


def trial_key(device: torch.device, backbone: Mapping[str, Any], batch: int) -> str:
    parts = [device_description(device), f"torch {torch.__version__}", f"threads {torch.get_num_threads()}",
             *(f"{k}={backbone.get(k)}" for k in ("arch", "pooling", "image_size")), f"batch {batch}"]  # fmt: skip
    return hashlib.sha256(" | ".join(parts).encode()).hexdigest()[:16]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_cache(path: Path, key: str, entry: dict[str, Any]) -> None:
    """Add one entry; a cache that cannot be written only costs a trial next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        cache = {**_read_cache(path), key: entry}
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
    except OSError as error:
        log.warning("cannot cache the precision trial in '%s': %s", path, error)


def time_forward(network: nn.Module, device: torch.device, image_size: int, batch: int) -> Callable[[str], float]:
    """A timer: seconds of one forward pass of a random batch in the given precision."""
    images = torch.rand(batch, 3, image_size, image_size, device=device).contiguous(memory_format=torch.channels_last)

    def seconds(precision: str) -> float:
        with torch.inference_mode(), autocast(precision, device):
            start = time.perf_counter()
            network(images).float().cpu()  # .cpu() waits for a GPU to finish
            return time.perf_counter() - start

    return seconds


def measure(timer: Callable[[str], float], precisions: Sequence[str], rounds: int = TRIAL_ROUNDS) -> dict[str, float]:
    """Median seconds per precision: one warm-up each, then rounds interleaved so drift hits all alike."""
    for precision in precisions:
        timer(precision)
    samples: dict[str, list[float]] = {p: [] for p in precisions}
    for _ in range(rounds):
        for precision in precisions:
            samples[precision].append(timer(precision))
    return {p: statistics.median(s) for p, s in samples.items()}


def decide(seconds: Mapping[str, float], batch: int, where: str) -> PrecisionChoice:
    """fp32 unless a reduced precision was measured more than MARGIN faster; the reason says why."""
    rates = {p: batch / s for p, s in seconds.items()}
    measured = ", ".join(f"{p} {r:.1f} images/s" for p, r in rates.items())
    best = max((p for p in rates if p != "fp32"), key=rates.__getitem__, default=None)
    if best is not None and rates[best] >= MARGIN * rates["fp32"]:
        verdict = f"{best} is {rates[best] / rates['fp32']:.2f}x fp32"
        return PrecisionChoice(best, f"auto: measured on {where}: {measured}; {verdict}", rates)
    verdict = f"no reduced precision is {MARGIN:.2f}x fp32 or faster"
    return PrecisionChoice("fp32", f"auto: measured on {where}: {measured}; {verdict}", rates)


def choose_precision(
    network: nn.Module,
    device: torch.device,
    backbone: Mapping[str, Any],
    *,
    batch: int,
    timer: Callable[[str], float] | None = None,
    use_cache: bool = True,
) -> PrecisionChoice:
    """What ``precision: auto`` means for this network on this device: a cached or fresh timed trial."""
    where = device_description(device)
    candidates = [p for p in offered_precisions(device) if p != "fp32"]
    if device.type == "cpu" and not cpu_may_have_fast_bf16():
        return PrecisionChoice("fp32", f"auto: {where} has no AVX-512 BF16 or AMX, so bf16 is only emulated")
    key = trial_key(device, backbone, batch)
    path = cache_path()
    if use_cache and (entry := _read_cache(path).get(key)) and entry.get("precision") in offered_precisions(device):
        reason = f"{entry['reason']} (trial of {entry['measured_at']}, cached in {path})"
        return PrecisionChoice(entry["precision"], reason, entry.get("images_per_s", {}))
    timer = timer or time_forward(network, device, int(backbone["image_size"]), batch)
    choice = decide(measure(timer, ["fp32", *candidates]), batch, where)
    log.info("precision trial (batch %d): %s", batch, choice.reason)
    if use_cache:
        _write_cache(path, key, {"precision": choice.precision, "reason": choice.reason,
                                 "images_per_s": choice.images_per_s,
                                 "measured_at": datetime.now(UTC).isoformat(timespec="seconds")})  # fmt: skip
    return choice


def resolve_precision(
    requested: str, device: torch.device, network: nn.Module, backbone: Mapping[str, Any], *, batch: int
) -> PrecisionChoice:
    """The precision extraction runs in: ``auto`` by trial; an explicit one where the device offers it."""
    if requested == "auto":
        return choose_precision(network, device, backbone, batch=batch)
    if requested not in PRECISIONS:
        raise ValueError(f"precision '{requested}' is not one of auto, {', '.join(PRECISIONS)}")
    if requested in offered_precisions(device):
        return PrecisionChoice(requested, f"{requested} as configured")
    reason = (f"{requested} was configured, but {device_description(device)} has no native {requested} "
              "(it would be emulated, several times slower than fp32): fp32 instead")  # fmt: skip
    log.warning("%s", reason)
    return PrecisionChoice("fp32", reason)


def follow_recorded(recorded: str | Sequence[str], device: torch.device) -> tuple[str, str | None]:
    """The precision a query runs in to match a gallery extracted in ``recorded``, and a notice when it cannot.

    ``recorded`` is a list where the shards of a gallery ran on machines that chose differently.
    """
    choices = [recorded] if isinstance(recorded, str) else list(recorded)
    unknown = [p for p in choices if p not in PRECISIONS]
    if unknown or not choices:
        raise ValueError(f"recorded precision {recorded!r} is not one of {', '.join(PRECISIONS)}")
    offered = [p for p in choices if p in offered_precisions(device)]
    if offered and len(choices) == 1:
        return offered[0], None
    if offered:
        return offered[0], (
            f"the gallery's shards were extracted in several precisions ({', '.join(choices)}); queries run in "
            f"{offered[0]}; expected cosine to the stored features of the others: "
            f"≥ {min(EXPECTED_COSINE_TO_FP32[p] for p in choices):.4g}"
        )
    worst = min(EXPECTED_COSINE_TO_FP32[p] for p in choices)
    return "fp32", (
        f"the gallery was extracted in {', '.join(choices)}, which {device_description(device)} does not compute "
        f"natively; queries run in fp32, the nearest precision it has; expected cosine of a query's features to "
        f"the stored ones of the same image: ≥ {worst:.4g}"
    )
