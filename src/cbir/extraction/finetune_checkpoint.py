"""Fine-tuning's checkpoint: one safetensors file (model, head, optimizer, best model) with its progress as JSON.

Written atomically after every epoch; it carries a key of what was trained (settings, seed, base
weights, inputs), and a checkpoint of another key is not resumed. Nothing is pickled.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from cbir.io import atomic_path

CHECKPOINT_FILE = "checkpoint.safetensors"


@dataclass
class Progress:
    """What carries from one epoch to the next besides the tensors."""

    epoch: int = 0  # the last finished epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_map: float | None = None
    epochs_since_best: int = 0
    base_validation_map: float | None = None
    scaler: dict[str, Any] | None = None  # the fp16 gradient scaler's state

    def improved(self, validation_map: float) -> bool:
        return self.best_map is None or validation_map > self.best_map


def tensors_of(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A state dict as CPU tensors of their own (safetensors refuses shared or strided memory)."""
    return {f"{prefix}{key}": value.detach().to("cpu", copy=True).contiguous() for key, value in state.items()}


def save_checkpoint(
    folder: Path,
    key: str,
    progress: Progress,
    model: nn.Module,
    head: nn.Module,
    optimizer: torch.optim.Optimizer,
    best_model: dict[str, torch.Tensor] | None,
) -> Path:
    """Write the checkpoint of the epoch just finished (``best_model``: None when that epoch is the best)."""
    tensors = {**tensors_of(model.state_dict(), "model."), **tensors_of(head.state_dict(), "head.")}
    optimizer_state = optimizer.state_dict()
    values: dict[str, dict[str, Any]] = {}
    for index, entries in optimizer_state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                values.setdefault(str(index), {})[name] = value
    if best_model is not None:
        tensors.update(tensors_of(best_model, "best."))
    metadata = {
        "key": key,
        "progress": json.dumps(asdict(progress)),
        "param_groups": json.dumps(optimizer_state["param_groups"]),
        "optimizer_values": json.dumps(values),
    }
    path = folder / CHECKPOINT_FILE
    with atomic_path(path) as partial:
        save_file(tensors, str(partial), metadata=metadata)
    return path


def checkpoint_key_of(folder: Path) -> str | None:
    """The key of the checkpoint in ``folder`` (None: none there, or unreadable)."""
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as checkpoint:
            return (checkpoint.metadata() or {}).get("key")
    except (SafetensorError, OSError):
        return None


def resume(
    folder: Path,
    key: str,
    model: nn.Module,
    head: nn.Module,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    log: logging.Logger,
) -> tuple[Progress, dict[str, torch.Tensor] | None] | None:
    """Load the checkpoint of ``key`` into the model, head and optimizer: its progress and best model state.

    None where there is no checkpoint of this key, or one past ``epochs`` (it is left to be replaced). The
    best model state is None when the last finished epoch is the best (the model itself then).
    """
    found = checkpoint_key_of(folder)
    if found is None:
        return None
    if found != key:
        log.info("fine-tuning: the checkpoint in %s is of other settings or inputs: starting afresh", folder)
        return None
    path = folder / CHECKPOINT_FILE
    with safe_open(str(path), framework="pt") as checkpoint:
        metadata = checkpoint.metadata()
    progress = Progress(**json.loads(metadata["progress"]))
    if progress.epoch > epochs:
        log.info("fine-tuning: the checkpoint in %s is past epoch %d: starting afresh", folder, epochs)
        return None
    tensors = load_file(str(path))
    model.load_state_dict(_part(tensors, "model."))
    head.load_state_dict(_part(tensors, "head."))
    state: dict[int, dict[str, Any]] = {}
    for name, value in _part(tensors, "optimizer.").items():
        index, entry = name.split(".", 1)
        state.setdefault(int(index), {})[entry] = value
    for index, entries in json.loads(metadata["optimizer_values"]).items():
        state.setdefault(int(index), {}).update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    best = _part(tensors, "best.") or None
    log.info("fine-tuning: resuming after epoch %d from %s", progress.epoch, path)
    return progress, best


def _part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}


def remove_checkpoint(folder: Path) -> None:
    """Remove the checkpoint, and its folder when nothing else is left in it."""
    (folder / CHECKPOINT_FILE).unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
