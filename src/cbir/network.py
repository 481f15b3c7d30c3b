"""One prepared network: backbone and weights, seed, device, precision, memory format and preprocessing.

Extraction, the query-latency measurement, ``cbir query`` and ``cbir serve`` all embed images
through a :class:`PreparedNetwork`. Extraction prepares one from the config
(:func:`prepare_network`, which resolves ``precision: auto``); the query side prepares one from
what a feature file recorded (:func:`prepare_from_record`), so a query image goes through the
computation its gallery went through, and ``auto`` is not resolved again on another machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torchvision.transforms import v2 as transforms

from cbir.backbones import (
    BACKBONES,
    BackboneSpec,
    build_backbone,
    feature_dim,
    get_backbone,
    preprocessing_description,
    transform_from_description,
)
from cbir.layers import FeatureNetwork
from cbir.plugins import PluginError, load_plugin
from cbir.precision import autocast, follow_recorded, resolve_precision

if TYPE_CHECKING:
    from PIL import Image

# the trial of precision: auto times at most this many images at once on a CPU (a few seconds)
CPU_TRIAL_BATCH = 4


class RecordError(ValueError):
    """A feature file's record of its network cannot be followed; the message says what is wrong."""


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("extraction.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


@dataclass
class PreparedNetwork:
    """A backbone on its device, in its precision and memory format, with its preprocessing."""

    spec: BackboneSpec
    seed: int
    device: torch.device
    precision: str
    precision_reason: str
    network: FeatureNetwork
    transform: transforms.Compose
    preprocessing: dict[str, Any]
    feature_dim: int
    notice: str | None = None  # set where a recorded setting could not be followed

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The network's input tensor (3 x size x size) for a decoded RGB image."""
        return self.transform(image)

    def embed(self, batch: torch.Tensor) -> np.ndarray:
        """Features (batch, dim), float32, of preprocessed images."""
        on_cuda = self.device.type == "cuda"
        with torch.inference_mode(), autocast(self.precision, self.device):
            batch = batch.to(self.device, non_blocking=on_cuda, memory_format=torch.channels_last)
            return self.network(batch).float().cpu().numpy()

    def record(self) -> dict[str, Any]:
        """What a feature file records of the network, for :func:`prepare_from_record` to follow."""
        return {
            **asdict(self.spec),
            "layer": self.network.layer,
            "feature_dim": self.feature_dim,
            "preprocessing": self.preprocessing,
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            "device": str(self.device),
            "seed": self.seed,
            **({"plugin": plugin} if (plugin := get_backbone(self.spec.arch).plugin) else {}),
        }


def _place(network: FeatureNetwork, device: torch.device) -> FeatureNetwork:
    return network.to(device, memory_format=torch.channels_last)


def prepare_network(
    spec: BackboneSpec, *, seed: int = 0, device: str = "auto", precision: str = "auto", batch_size: int = 32
) -> PreparedNetwork:
    """The network extraction runs: ``precision: auto`` resolved by a timed trial on this machine."""
    network = build_backbone(spec, seed=seed)
    dim = feature_dim(network, spec.image_size)
    torch_device = resolve_device(device)
    network = _place(network, torch_device)
    trial_batch = batch_size if torch_device.type == "cuda" else min(batch_size, CPU_TRIAL_BATCH)
    choice = resolve_precision(precision, torch_device, network, asdict(spec), batch=trial_batch)
    description = preprocessing_description(spec, network)
    return PreparedNetwork(spec, seed, torch_device, choice.precision, choice.reason, network,
                           transform_from_description(description), description, dim)  # fmt: skip


def prepare_from_record(record: Mapping[str, Any], device: str = "auto") -> PreparedNetwork:
    """The network a feature file's images went through, rebuilt from its record, for queries.

    Architecture, weights, seed, pooling, image size, preprocessing and precision come from the
    record. Where this machine cannot compute in the recorded precision (fp16 features queried
    on a CPU), the query runs in fp32 and ``notice`` says so, with the cosine to expect: the
    caller shows it once (``cbir query`` on stderr, ``cbir serve`` in its log and on its page).
    """
    missing = [key for key in ("arch", "weights", "pooling", "image_size", "precision", "preprocessing")
               if key not in record]  # fmt: skip
    if missing:
        raise RecordError(f"the feature record lacks {', '.join(missing)}: it was written by an older cbir")
    if record.get("plugin") and record["arch"] not in BACKBONES:
        try:
            load_plugin(str(record["plugin"]))
        except PluginError as error:
            raise RecordError(
                f"the backbone '{record['arch']}' comes from a plugin that cannot be loaded: {error}"
            ) from error
    spec = BackboneSpec.from_config(record)
    seed = int(record.get("seed", 0))
    torch_device = resolve_device(device)
    try:
        transform = transform_from_description(record["preprocessing"])
        precision, notice = follow_recorded(record["precision"], torch_device)
    except (ValueError, KeyError, TypeError) as error:
        raise RecordError(f"the feature record cannot be followed: {error}") from error
    network = build_backbone(spec, seed=seed)
    dim = feature_dim(network, spec.image_size)
    if "feature_dim" in record and int(record["feature_dim"]) != dim:
        raise RecordError(f"the record says {record['feature_dim']}-D features but {spec} gives {dim}-D")
    reason = notice or f"{precision}, as the gallery was extracted"
    return PreparedNetwork(spec, seed, torch_device, precision, reason, _place(network, torch_device), transform,
                           dict(record["preprocessing"]), dim, notice)  # fmt: skip
