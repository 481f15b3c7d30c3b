"""One prepared network: backbone and weights, seed, device, precision, memory format and preprocessing.

Extraction, the query-latency measurement, ``cbir query`` and ``cbir serve`` all embed images
through a :class:`PreparedNetwork`. Extraction prepares one from the config
(:func:`prepare_network`, which resolves ``precision: auto``); the query side prepares one from
what a feature file recorded (:func:`prepare_from_record`), so a query image goes through the
computation its gallery went through, and ``auto`` is not resolved again on another machine.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torchvision.transforms import v2 as transforms

from cbir.data.images import load_rgb_image
from cbir.extraction.build import build_backbone, feature_dim
from cbir.extraction.engines import ENGINE_RECORD, QUALITY_BAR_COSINE, OpenVinoRunner, openvino_available, vnni_problem
from cbir.extraction.layers import FeatureNetwork
from cbir.extraction.precision import EXPECTED_COSINE_TO_FP32, autocast, follow_recorded, resolve_precision
from cbir.extraction.preprocess import preprocessing_description, transform_from_description
from cbir.extraction.registry import BACKBONES, BackboneSpec, get_backbone
from cbir.extraction.weights import WEIGHTS_FILE_SUFFIXES
from cbir.plugins import PluginError, load_plugin

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
    engine: str = "torch"
    engine_model: str | None = None  # the OpenVINO model file (engine: openvino)
    runner: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)  # OpenVINO's compiled model

    @property
    def draft_to(self) -> int | None:
        """The side large JPEGs are draft-decoded towards (None: decoded in full, as older galleries were)."""
        return int(self.preprocessing["resize"][0]) if self.preprocessing.get("jpeg_draft") else None

    def decode(self, path: str | Path) -> Image.Image:
        """An image file decoded as the gallery's images were (:func:`cbir.data.images.load_rgb_image`)."""
        return load_rgb_image(path, self.draft_to)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The network's input tensor (3 x size x size) for a decoded RGB image."""
        return self.transform(image)

    def embed(self, batch: torch.Tensor) -> np.ndarray:
        """Features (batch, dim), float32, of preprocessed images."""
        if self.runner is not None:
            return self.runner(batch.numpy())
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
            "engine": self.engine,
            **({"engine_model": self.engine_model} if self.engine_model else {}),
            **({"plugin": plugin} if (plugin := get_backbone(self.spec.arch).plugin) else {}),
        }


def _place(network: FeatureNetwork, device: torch.device) -> FeatureNetwork:
    return network.to(device, memory_format=torch.channels_last)


def prepare_network(
    spec: BackboneSpec,
    *,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 32,
    engine: Mapping[str, Any] | None = None,
    decode: str = "pillow",
) -> PreparedNetwork:
    """The network extraction runs: ``precision: auto`` resolved by a timed trial on this machine.

    ``decode``: how extraction decodes the images (``extraction.decode``), recorded in the preprocessing.

    ``engine`` is a prepared engine's record (:func:`cbir.extraction.engines.read_engine`): OpenVINO runs its
    model file in its precision; a torch engine chosen by ``engine: auto`` fixes the precision; an input size the
    engine was prepared at replaces the spec's.
    """
    if engine and engine.get("image_size"):  # chosen by the engine's input-size trial (cbir.extraction.input_size)
        spec = replace(spec, image_size=int(engine["image_size"]))
    network = build_backbone(spec, seed=seed)
    dim = feature_dim(network, spec.image_size)
    torch_device = resolve_device(device)
    network = _place(network, torch_device)
    description = preprocessing_description(spec, network, decode)
    transform = transform_from_description(description)
    if engine and engine.get("engine") == "openvino":
        if torch_device.type != "cpu":
            raise RecordError(
                f"the engine prepared for this dataset is OpenVINO, which runs on the CPU, but extraction runs on "
                f"{torch_device}: set extraction.device: cpu, or extraction.engine: torch"
            )
        if problem := vnni_problem(engine):
            raise RecordError(
                f"cannot extract with the prepared engine {Path(str(engine['model'])).parent}: {problem}. Run the "
                "extraction on CPUs with VNNI, or prepare the engine again on this kind of CPU (delete that folder: "
                "without VNNI int8 is quantized with 7-bit weights, which both kinds run alike)"
            )
        runner = OpenVinoRunner(engine["model"], engine["precision"], torch.get_num_threads())
        return PreparedNetwork(spec, seed, torch_device, engine["precision"], engine["reason"], network, transform,
                               description, dim, engine="openvino", engine_model=str(engine["model"]),
                               runner=runner)  # fmt: skip
    if engine and engine.get("precision") not in (None, "auto"):
        precision = engine["precision"]
    trial_batch = batch_size if torch_device.type == "cuda" else min(batch_size, CPU_TRIAL_BATCH)
    choice = resolve_precision(precision, torch_device, network, asdict(spec), batch=trial_batch)
    reason = choice.reason if not engine or engine.get("precision") in (None, "auto") else engine["reason"]
    return PreparedNetwork(spec, seed, torch_device, choice.precision, reason, network, transform, description, dim)


def prepare_from_record(
    record: Mapping[str, Any], device: str = "auto", root: str | Path | None = None
) -> PreparedNetwork:
    """The network a feature file's images went through, rebuilt from its record, for queries.

    Architecture, weights, seed, pooling, image size, preprocessing and precision come from the
    record. Where this machine cannot compute in the recorded precision (fp16 features queried
    on a CPU), the query runs in fp32 and ``notice`` says so, with the cosine to expect: the
    caller shows it once (``cbir query`` on stderr, ``cbir serve`` in its log and on its page).
    An OpenVINO gallery runs its recorded model file (relative to ``root``, the folder the workflow
    ran in); where that cannot be loaded here, torch fp32 runs, with a notice.
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
    spec = _weights_under_root(BackboneSpec.from_config(record), root)
    seed = int(record.get("seed", 0))
    torch_device = resolve_device(device)
    runner, model_file, notice = None, None, None
    try:
        transform = transform_from_description(record["preprocessing"])
        if record.get("engine") == "openvino":
            model_file = Path(root or ".") / str(record["engine_model"])
            precision = str(record["precision"])
            runner, notice = _openvino_runner(model_file, precision, torch_device)
            if runner is None:
                precision = "fp32"
        else:
            precision, notice = follow_recorded(record["precision"], torch_device)
    except (ValueError, KeyError, TypeError) as error:
        raise RecordError(f"the feature record cannot be followed: {error}") from error
    network = build_backbone(spec, seed=seed)
    dim = feature_dim(network, spec.image_size)
    if "feature_dim" in record and int(record["feature_dim"]) != dim:
        raise RecordError(f"the record says {record['feature_dim']}-D features but {spec} gives {dim}-D")
    engine = "openvino" if runner is not None else "torch"
    prefix = "openvino " if engine == "openvino" else ""
    reason = notice or f"{prefix}{precision}, as the gallery was extracted"
    return PreparedNetwork(spec, seed, torch_device, precision, reason, _place(network, torch_device), transform,
                           dict(record["preprocessing"]), dim, notice, engine,
                           str(model_file) if runner is not None else None, runner)  # fmt: skip


def _weights_under_root(spec: BackboneSpec, root: str | Path | None) -> BackboneSpec:
    """A weights file recorded relative to the folder the workflow ran in (a fine-tuned network's) found there,
    wherever the query runs from."""
    path = Path(spec.weights)
    if root is None or path.is_absolute() or path.suffix not in WEIGHTS_FILE_SUFFIXES or path.is_file():
        return spec
    return replace(spec, weights=str(Path(root) / path))


def _openvino_runner(model_file: Path, precision: str, device: torch.device) -> tuple[Any, str | None]:
    """The gallery's OpenVINO model compiled here, or (None, why queries run in torch fp32 instead)."""
    expected = EXPECTED_COSINE_TO_FP32.get(precision, QUALITY_BAR_COSINE)
    fallback = f"queries run in torch fp32; expected cosine to the stored features of the same image: ≥ {expected:.4g}"
    if device.type != "cpu":
        return (
            None,
            f"the gallery was extracted by OpenVINO {precision} on a CPU; this query runs on {device}: {fallback}",
        )
    if not openvino_available():
        return None, f"the gallery was extracted by OpenVINO {precision}, which is not installed here: {fallback}"
    if not model_file.is_file():
        return None, f"the gallery's OpenVINO model '{model_file}' is missing: {fallback}"
    with contextlib.suppress(OSError, ValueError):  # an unreadable engine record: the model runs as it did
        if problem := vnni_problem(json.loads((model_file.parent / ENGINE_RECORD).read_text())):
            return None, f"{problem}: {fallback}"
    return OpenVinoRunner(model_file, precision, torch.get_num_threads()), None
