"""Fine-tuning's settings, and the checks of its input made before any training (classes, validation part, memory)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cbir.extraction.registry import BackboneSpec, get_backbone

LOSSES = ("ce", "cosface", "arcface")
# the side at which a trunk's activations are counted; larger sizes are scaled from it by area
PROBE_SIDE = 64
# what autograd keeps besides the layers' outputs (gradients in flight, the allocator's slack), measured on
# EfficientNet-Lite0 at 224 px on the CPU: the peak was 1.1 x the fp32 outputs; the probe's 64 px overcounts too
ACTIVATION_OVERHEAD = 1.25
FP32_BYTES = 4
# weights, their gradients and AdamW's two moments
PARAMETER_COPIES = 4


class FinetuneError(ValueError):
    """A user's mistake in fine-tuning's input or settings; the message says what, where and what to do."""


_KINDS: dict[str, type] = {
    "epochs": int,
    "lr": float,
    "weight_decay": float,
    "batch_size": int,
    "freeze_until": int,
    "loss": str,
    "label_smoothing": float,
    "margin": float,
    "scale": float,
    "image_size": int,
    "augment": bool,
    "patience": int,
}


@dataclass(frozen=True)
class FinetuneSettings:
    epochs: int = 5
    lr: float = 1e-4  # AdamW; the new head learns at HEAD_LR_FACTOR times this (cbir.extraction.finetune)
    weight_decay: float = 1e-4
    batch_size: int = 32
    freeze_until: int = 0  # leading top-level blocks of the trunk kept frozen (0: all trained)
    loss: str = "cosface"  # "ce" (cross-entropy, label smoothing) | "cosface" | "arcface" (cosine head with a margin)
    label_smoothing: float = 0.1  # ce only
    margin: float = 0.35  # cosface: subtracted from the cosine; arcface: added to the angle (radians)
    scale: float = 30.0  # cosface, arcface: the logits are scale x cosine
    image_size: int | None = None  # None: the backbone spec's
    augment: bool = True  # random resized crop (scale 0.7-1) and horizontal flip
    patience: int = 2  # early stopping: epochs without a better validation mAP

    def __post_init__(self) -> None:
        if problems := self.problems():
            raise FinetuneError(f"fine-tuning settings: {'; '.join(problems)}")

    def problems(self) -> list[str]:
        wrong_type = [
            f"{name} must be {'an integer' if kind is int else 'a ' + kind.__name__}, not {value!r}"
            for name, kind in _KINDS.items()
            if not _is_kind(value := getattr(self, name), kind) and not (name == "image_size" and value is None)
        ]
        if wrong_type:
            return wrong_type
        checks = {
            f"epochs must be at least 1, not {self.epochs}": self.epochs >= 1,
            f"lr must be above 0, not {self.lr}": self.lr > 0 and math.isfinite(self.lr),
            f"weight_decay must be 0 or more, not {self.weight_decay}": self.weight_decay >= 0,
            # batch normalisation trains on batches of at least 2 images
            f"batch_size must be at least 2, not {self.batch_size}": self.batch_size >= 2,
            f"freeze_until must be 0 or more, not {self.freeze_until}": self.freeze_until >= 0,
            f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}": self.loss in LOSSES,
            f"label_smoothing must be in [0, 1), not {self.label_smoothing}": 0 <= self.label_smoothing < 1,
            f"margin must be in [0, 1.5], not {self.margin}": 0 <= self.margin <= 1.5,
            f"scale must be above 0, not {self.scale}": self.scale > 0,
            f"image_size must be at least 16 (or unset), not {self.image_size}": (self.image_size or 16) >= 16,
            f"patience must be at least 1, not {self.patience}": self.patience >= 1,
        }
        return [message for message, fine in checks.items() if not fine]

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> FinetuneSettings:
        """Settings from a config's ``finetune`` entry; unknown keys and values of the wrong type are errors."""
        unknown = sorted(set(mapping) - set(_KINDS))
        if unknown:
            raise FinetuneError(
                f"unknown fine-tuning settings {', '.join(map(repr, unknown))}: remove or correct them "
                f"(allowed: {', '.join(_KINDS)})"
            )
        return cls(**{name: _coerce(name, value) for name, value in mapping.items()})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_kind(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _coerce(name: str, value: Any) -> Any:
    """YAML reads 1e-4 (no dot) as a string: numbers written so are taken as numbers."""
    if _KINDS[name] is float and isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    if _KINDS[name] is float and _is_kind(value, float):
        return float(value)
    return value


def training_device(name: str | torch.device = "auto") -> torch.device:
    """The device fine-tuning runs on: CUDA where there is one (``auto``), else the CPU."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FinetuneError(
            f"fine-tuning device is '{name}' but this machine has no CUDA device: set device auto or cpu"
        )
    return device


@dataclass(frozen=True)
class TrunkProbe:
    """What one small forward pass tells of a trunk: its blocks, its output channels, its activations' size."""

    blocks: list[tuple[str, list[nn.Parameter], list[nn.Module]]]  # name, parameters, modules (for eval mode)
    channels: int
    activations_per_pixel: float  # elements of every layer's output, per input pixel of one image
    parameters: int


def probe_trunk(trunk: nn.Module, image_side: int) -> TrunkProbe:
    """Run the trunk once on a small image, counting each layer's output and noting which modules ran.

    The blocks are the trunk's top-level children that ran and hold parameters, in order; a wrapper of
    one module is looked through, and a ModuleList (EfficientNet's MBConv blocks) counts block by block.
    Parameters held by the trunk itself (a ViT's class token) come first, as one block.
    """
    ran: set[int] = set()
    outputs = [0]

    def count(module: nn.Module, _inputs: Any, output: Any) -> None:
        ran.add(id(module))
        if isinstance(output, torch.Tensor) and not list(module.children()):
            outputs[0] += output.numel()

    hooks = [module.register_forward_hook(count) for module in trunk.modules()]
    was_training = trunk.training
    try:
        trunk.eval()
        with torch.inference_mode():
            maps = trunk(torch.zeros(1, 3, image_side, image_side))
    finally:
        for hook in hooks:
            hook.remove()
        trunk.train(was_training)
    return TrunkProbe(
        blocks=_blocks(trunk, ran),
        channels=int(maps.shape[1]),
        activations_per_pixel=outputs[0] / image_side**2,
        parameters=sum(p.numel() for p in trunk.parameters()),
    )


def _blocks(trunk: nn.Module, ran: set[int]) -> list[tuple[str, list[nn.Parameter], list[nn.Module]]]:
    module, prefix = trunk, ""
    while len(children := list(module.named_children())) == 1 and not list(module.parameters(recurse=False)):
        name, module = children[0]
        prefix += f"{name}."
    blocks = []
    if own := list(module.parameters(recurse=False)):
        names = [name for name, _ in module.named_parameters(recurse=False)]
        blocks.append((f"{prefix}{'+'.join(names)}", own, []))
    for name, child in module.named_children():
        parts = list(child.named_children()) if isinstance(child, nn.ModuleList) else [("", child)]
        for part_name, part in parts:
            if id(part) in ran and (parameters := list(part.parameters())):
                blocks.append((f"{prefix}{name}{'.' + part_name if part_name else ''}", parameters, [part]))
    return blocks


def probe_side(spec: BackboneSpec, image_size: int) -> int:
    return get_backbone(spec.arch).fixed_image_size or min(image_size, PROBE_SIDE)


def training_memory_bytes(probe: TrunkProbe, batch_size: int, image_size: int) -> int:
    """About how much memory one training step of a batch needs (fp32 activations: an upper bound in bf16)."""
    activations = probe.activations_per_pixel * image_size**2 * batch_size * FP32_BYTES * ACTIVATION_OVERHEAD
    return int(activations + probe.parameters * FP32_BYTES * PARAMETER_COPIES)


def available_memory_bytes(device: torch.device) -> tuple[int, str]:
    """The memory training may use on ``device``, and what it is (free GPU memory, or available RAM)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {torch.cuda.get_device_name(device)}"
    available = _meminfo_available()
    with contextlib.suppress(OSError, ValueError):  # a cgroup limit (container, SLURM job) below the machine's
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, max(int(limit) - used, 0))
    return available, "available RAM"


def _meminfo_available() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return int(np.iinfo(np.int64).max)  # unknown: not a reason to refuse


def check_finetune_input(
    labels: np.ndarray,
    validation_rows: np.ndarray,
    settings: FinetuneSettings,
    spec: BackboneSpec,
    device: str | torch.device = "auto",
    *,
    class_names: Sequence[str] | None = None,
    where: str = "the training split",
    probe: TrunkProbe | None = None,
) -> None:
    """Raise :class:`FinetuneError` where fine-tuning cannot run on this input, before any training.

    A class with one image; a validation part that misses a class, or holds all of a class's images;
    an image size the backbone cannot take; ``freeze_until`` beyond the trunk's blocks; a batch whose
    training step does not fit the device's memory. ``probe``: the trunk already probed (else it is
    built here, with random weights, and run once on one small image).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise FinetuneError(f"fine-tuning needs class indices 0..C-1 for the images of {where}, one per image")
    rows = _validation_rows(validation_rows, len(labels), where)
    _check_classes(labels, rows, class_names, where)
    image_size = settings.image_size or spec.image_size
    entry = get_backbone(spec.arch)
    if problem := entry.image_size_problem(image_size):
        raise FinetuneError(f"fine-tuning {spec.arch}: {problem}")
    if probe is None:
        model = entry.build()
        probe = probe_trunk(entry.trunk(model), probe_side(spec, image_size))
    if settings.freeze_until > len(probe.blocks):
        raise FinetuneError(
            f"freeze_until is {settings.freeze_until} but the {spec.arch} trunk has {len(probe.blocks)} blocks "
            f"({', '.join(name for name, _, _ in probe.blocks)}): set freeze_until to at most {len(probe.blocks)}"
        )
    _check_memory(probe, settings, image_size, spec, training_device(device))


def _validation_rows(validation_rows: np.ndarray, n_images: int, where: str) -> np.ndarray:
    rows = np.asarray(validation_rows)
    if rows.size and (not np.issubdtype(rows.dtype, np.integer) or rows.min() < 0 or rows.max() >= n_images):
        raise FinetuneError(f"the validation rows of {where} must be row numbers 0..{n_images - 1}")
    if len(np.unique(rows)) != len(rows):
        raise FinetuneError(f"the validation rows of {where} hold a row twice")
    return rows.astype(np.int64)


def _check_classes(labels: np.ndarray, rows: np.ndarray, class_names: Sequence[str] | None, where: str) -> None:
    def named(classes: Sequence[int]) -> str:
        shown = [repr(class_names[c]) if class_names is not None else str(c) for c in classes[:8]]
        return ", ".join(shown) + (f" and {len(classes) - 8} more" if len(classes) > 8 else "")

    counts = np.bincount(labels, minlength=len(class_names or ()))
    present = np.flatnonzero(counts)
    if len(present) < 2:
        raise FinetuneError(f"{where} holds {len(present)} class: fine-tuning on labels needs at least 2 classes")
    if len(single := [int(c) for c in present if counts[c] == 1]):
        raise FinetuneError(
            f"class {named(single)} has one image in {where}: fine-tuning needs at least 2 images per class (one "
            "to train on, one held out to validate); add images to it, or leave it out of the dataset"
        )
    advice = (
        "each class needs at least one held-out image and one to train on: give small classes more images, "
        "or change the validation share"
    )
    if not len(rows):
        raise FinetuneError(
            f"no images of {where} are held out for validation: fine-tuning stops early on the validation mAP; "
            + advice
        )
    in_validation = np.bincount(labels[rows], minlength=len(counts))
    if len(missing := [int(c) for c in present if in_validation[c] == 0]):
        raise FinetuneError(f"class {named(missing)} has no image among the validation rows of {where}; {advice}")
    if len(only := [int(c) for c in present if in_validation[c] == counts[c]]):
        raise FinetuneError(f"class {named(only)} has all its images among the validation rows of {where}; {advice}")


def _check_memory(
    probe: TrunkProbe, settings: FinetuneSettings, image_size: int, spec: BackboneSpec, device: torch.device
) -> None:
    needed = training_memory_bytes(probe, settings.batch_size, image_size)
    available, what = available_memory_bytes(device)
    if needed <= available:
        return
    per_image = training_memory_bytes(probe, 1, image_size) - training_memory_bytes(probe, 0, image_size)
    fitting_batch = (available - training_memory_bytes(probe, 0, image_size)) // max(per_image, 1)
    if fitting_batch >= 2:
        suggestion = f"set batch_size to {fitting_batch} or less, or a smaller image_size"
    else:
        suggestion = "even batches of 2 images do not fit: set a smaller image_size"
    raise FinetuneError(
        f"fine-tuning {spec.arch} on batches of {settings.batch_size} images of {image_size} px needs about "
        f"{needed / 1e9:.1f} GB on {device.type}, but {available / 1e9:.1f} GB is {what}: {suggestion}"
    )
