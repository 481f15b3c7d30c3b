"""Inference engines of the feature network: torch, or OpenVINO on the CPU (fp32, bf16, or int8 by NNCF).

An engine is prepared once per dataset and backbone (rule ``prepare_engine``) into a folder
under ``results/<dataset>/engine/<backbone>/``: ``engine.json`` says which engine and precision
extraction runs in and why, and, for OpenVINO, ``model.xml``/``model.bin`` hold the converted
(and for int8, quantized) network. Every extraction shard, the query-latency measurement,
``cbir query`` and ``cbir serve`` then run that same model through :mod:`cbir.extraction.network`.

int8 comes from NNCF post-training quantization, calibrated on a seeded sample of the dataset's
own training images: images that are in the training set of every split of the grid (the
ratio splits are nested: a smaller training fraction keeps a subset of a larger one's images),
so no test image of any split sets a quantization range.

``engine: auto`` measures on this machine (a timed trial of a random batch, like
``precision: auto``) every path that passes the quality bar: mean cosine of its features to
torch fp32 of at least :data:`QUALITY_BAR_COSINE` on held-out training images of the dataset. It
takes the fastest, and never one that is not :data:`cbir.extraction.precision.MARGIN` times torch fp32's
speed. Calibrating int8 costs time of its own (17 s for EfficientNet-Lite0 at 128 px, 62 s for
VGG16 at 224 px on 2 cores): unless int8 is asked for, it is only tried where the fastest other
path would need :data:`INT8_PAYBACK_S` or more for the dataset's images, since it could never
save more than that time.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cbir.data.images import load_rgb_image
from cbir.data.split import OFFICIAL, make_split, parse_split
from cbir.extraction.build import build_backbone
from cbir.extraction.input_size import SizeTrial, choose_input_size, torch_runner
from cbir.extraction.precision import MARGIN, autocast, measure
from cbir.extraction.preprocess import preprocessing
from cbir.hardware import cpu_description, cpu_has_vnni, cpu_may_have_fast_bf16
from cbir.io import atomic_path

if TYPE_CHECKING:
    import pandas as pd

    from cbir.extraction.layers import FeatureNetwork
    from cbir.extraction.registry import BackboneSpec

log = logging.getLogger(__name__)

ENGINES = ("torch", "openvino", "auto")
ENGINE_RECORD = "engine.json"
OPENVINO_MODEL = "model.xml"
QUALITY_BAR_COSINE = 0.99
HOLDOUT_IMAGES = 32  # held-out training images the quality bar is measured on
INT8_PAYBACK_S = 60.0  # seconds of extraction at the fastest other path below which auto does not calibrate int8
TRIAL_BATCH = 4
# OpenVINO's inference precision for the layers it runs in floating point; an int8 model keeps
# fp32 between its quantized layers, so its result does not depend on the CPU having bf16
OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


class EngineError(RuntimeError):
    """An engine cannot be prepared or loaded; the message says what is missing."""


def openvino_available() -> bool:
    try:  # a probe: OpenVINO is an optional install
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def export_openvino(network: FeatureNetwork, image_size: int) -> Any:
    """The feature network (trunk and pooling) as an OpenVINO model with a dynamic batch."""
    import openvino as ov  # OpenVINO on first use: an optional install, slow to import

    example = torch.zeros(1, 3, image_size, image_size)
    # without gradients: a traced ViT then takes one attention path every time (else tracing fails its check)
    with torch.no_grad():
        return ov.convert_model(network.float().eval(), example_input=example, input=[(-1, 3, image_size, image_size)])


def quantize_int8(model: Any, calibration: Sequence[np.ndarray], vnni: bool = True) -> Any:
    """NNCF post-training quantization of an OpenVINO model, calibrated on preprocessed image batches.

    ``vnni``: the model is for CPUs with VNNI. Without VNNI, oneDNN's int8 dot products sum pairs
    in 16 bits, which 8-bit weights can saturate: every layer's weights then take 7 bits (NNCF's
    overflow fix). EfficientNet-Lite0 on Corel-1K (mean cosine to fp32 on 128 held-out photos):
    8-bit weights 0.991 with VNNI but 0.952 with oneDNN capped at AVX2; 7-bit weights 0.989 on both.
    """
    import nncf  # NNCF on first use: an optional install, slow to import
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    samples = [batch[i : i + 1] for batch in calibration for i in range(len(batch))]
    overflow_fix = OverflowFix.FIRST_LAYER if vnni else OverflowFix.ENABLE
    # the full bias correction: EfficientNet-Lite0 on Corel-1K keeps a mean cosine of 0.992 to fp32
    # with it, 0.988 with the fast one (below the quality bar), for twice the calibration time
    return nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples), fast_bias_correction=False,
                         advanced_parameters=AdvancedQuantizationParameters(overflow_fix=overflow_fix))  # fmt: skip


class OpenVinoRunner:
    """A compiled OpenVINO model: preprocessed images (N, 3, H, W) in, float32 features out."""

    def __init__(self, model: Any, precision: str, threads: int | None = None) -> None:
        import openvino as ov  # OpenVINO on first use: an optional install, slow to import

        config = {"INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = ov.Core()
        if isinstance(model, str | Path):
            model = core.read_model(str(model))
        self.compiled = core.compile_model(model, "CPU", config)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.compiled(np.ascontiguousarray(batch, dtype=np.float32))[0], dtype=np.float32)


def openvino_fp32_runner(network: FeatureNetwork, size: int, threads: int | None = None) -> OpenVinoRunner:
    """The network converted to OpenVINO for inputs of ``size`` px, run in fp32."""
    return OpenVinoRunner(export_openvino(network, size), "fp32", threads)


# --- the calibration sample -----------------------------------------------------------------


def calibration_pool(manifest: pd.DataFrame, splits: Sequence[str], seed: int) -> np.ndarray:
    """Rows of the manifest that are training images in every split of the grid."""
    labels = manifest["label"].to_numpy()
    in_all = np.ones(len(manifest), dtype=bool)
    for split in splits:
        if split == OFFICIAL:
            in_all &= manifest["official_subset"].astype(str).to_numpy() == "train"
        else:
            in_all &= make_split(labels, parse_split(split), seed)
    return np.flatnonzero(in_all)


def calibration_sample(
    manifest: pd.DataFrame, splits: Sequence[str], seed: int, n_calibration: int
) -> tuple[list[str], list[str]]:
    """Seeded paths for calibration and, disjoint from them where the pool allows, the held-out check."""
    pool = calibration_pool(manifest, splits, seed)
    order = np.random.default_rng([seed, 8]).permutation(pool)
    n_holdout = min(HOLDOUT_IMAGES, max(1, len(order) // 4))
    holdout, calibration = order[:n_holdout], order[n_holdout : n_holdout + n_calibration]
    if len(calibration) == 0:
        calibration = holdout
    paths = manifest["path"].astype(str).to_numpy()
    return paths[calibration].tolist(), paths[holdout].tolist()


# --- preparing an engine ----------------------------------------------------------------------


@dataclass(frozen=True)
class EngineChoice:
    engine: str
    precision: str
    reason: str
    cosine_to_fp32: dict[str, float]
    images_per_s: dict[str, float]
    calibration_images: int = 0
    model: str | None = None  # the OpenVINO model file, relative to the engine folder
    # an int8 model quantized where int8 runs on VNNI: on a CPU without it its features drift
    int8_needs_vnni: bool = False
    # the input size chosen by a trial (cbir.extraction.input_size): every image is extracted at it; None: the spec's
    image_size: int | None = None
    image_size_reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)))


def _batches(tensors: Sequence[torch.Tensor], size: int = 16) -> list[np.ndarray]:
    return [torch.stack(list(tensors[i : i + size])).numpy() for i in range(0, len(tensors), size)]


def _candidates(engine: str, precision: str, bf16_possible: bool) -> list[str]:
    """The paths to consider, as '<engine>-<precision>'."""
    if engine == "torch":
        return []  # extraction resolves the torch precision itself, as before
    if precision != "auto":
        return [f"openvino-{precision}"]
    wanted = ["openvino-fp32", "openvino-int8"] + (["openvino-bf16"] if bf16_possible else [])
    if engine == "openvino":
        return wanted
    return [*wanted, *(["torch-bf16"] if bf16_possible else []), "torch-fp32"]


def prepare_engine(spec: BackboneSpec, out_dir: str | Path, **options: Any) -> EngineChoice:
    """:func:`prepare_engine_into` a temporary folder that becomes ``out_dir`` once complete (a killed job leaves
    no half-prepared engine, whose digest the feature cache's fingerprint would take)."""
    out_dir = Path(out_dir)
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()  # an empty folder made by someone else: replaced
    with atomic_path(out_dir) as folder:
        return prepare_engine_into(spec, folder, **options)


def prepare_engine_into(
    spec: BackboneSpec,
    out_dir: str | Path,
    *,
    engine: str,
    precision: str,
    calibration_paths: Sequence[str],
    holdout_paths: Sequence[str],
    seed: int = 0,
    threads: int | None = None,
    enforce_bar: bool = True,
    n_images: int | None = None,
    size_trial: SizeTrial | None = None,
) -> EngineChoice:
    """Convert, quantize, check and time the candidate paths; write the chosen one into ``out_dir``.

    ``enforce_bar=False`` (benchmarks) keeps a requested path that is below the quality bar,
    so that it can be measured and reported as failing. ``n_images``: the images the engine will
    extract, which decides whether int8 is worth calibrating when it is not asked for (None: tried).
    ``size_trial``: training images the input size is chosen on first (:mod:`cbir.extraction.input_size`); the
    engine is prepared, and recorded, at that size.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if engine != "torch" and not openvino_available():
        raise EngineError(f"extraction.engine is '{engine}' but OpenVINO is not installed (pip install openvino nncf)")
    candidates = _candidates(engine, precision, cpu_may_have_fast_bf16())
    vnni = cpu_has_vnni()  # int8 is quantized for this CPU's dot products, and recorded as such
    # the sizes through OpenVINO fp32 where the engine will be OpenVINO's (torch fp32 is several times slower at 260 px)
    runner = functools.partial(openvino_fp32_runner, threads=threads) if candidates else torch_runner
    network = build_backbone(spec, seed=seed) if candidates or size_trial is not None else None
    sized = choose_input_size(spec, size_trial, seed, runner, network) if size_trial is not None else None
    if sized is not None:
        spec = replace(spec, image_size=sized.size)
    size_record = {"image_size": sized.size, "image_size_reason": sized.reason} if sized else {}
    if not candidates:
        choice = EngineChoice("torch", precision, "engine: torch as configured", {}, {}, **size_record)
        _write(out_dir, choice)
        return choice

    transform = preprocessing(spec, network)
    # decoded as extraction decodes them (preprocessing_description)
    draft_to = spec.image_size
    holdout = _batches([transform(load_rgb_image(p, draft_to)) for p in holdout_paths])
    with torch.inference_mode():
        reference = np.concatenate([network(torch.from_numpy(b)).numpy() for b in holdout])
    exported = export_openvino(network, spec.image_size)
    runs: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    models: dict[str, Any] = {}
    images = np.random.default_rng(seed).random((TRIAL_BATCH, 3, spec.image_size, spec.image_size), np.float32)
    skipped = ""
    for name in sorted(candidates, key=lambda name: name.endswith("int8")):  # int8 last: the others' speed decides it
        kind, wanted = name.split("-")
        if kind == "torch":

            def run(batch: np.ndarray, wanted: str = wanted) -> np.ndarray:
                with torch.inference_mode(), autocast(wanted, torch.device("cpu")):
                    return network(torch.from_numpy(batch)).float().numpy()

            runs[name] = run
            continue
        model = exported
        if wanted == "int8":
            if precision != "int8" and n_images is not None:
                seconds = measure(lambda other: _seconds(runs[other], images), list(runs))
                skipped = int8_not_worth(n_images, {other: TRIAL_BATCH / s for other, s in seconds.items()})
                if skipped:
                    log.info("%s", skipped)
                    continue
            calibration = _batches([transform(load_rgb_image(p, draft_to)) for p in calibration_paths])
            start = time.perf_counter()
            model = quantize_int8(exported, calibration, vnni=vnni)
            log.info("int8: calibrated on %d images in %.1f s", len(calibration_paths), time.perf_counter() - start)
        models[name] = model
        runs[name] = OpenVinoRunner(model, wanted, threads)

    cosines = {name: _mean_cosine(np.concatenate([run(b) for b in holdout]), reference) for name, run in runs.items()}
    passing = [name for name in runs if cosines[name] >= QUALITY_BAR_COSINE]
    failing = {name: cosines[name] for name in runs if name not in passing}
    if failing:
        log.warning("below the quality bar (mean cosine to torch fp32 < %s): %s", QUALITY_BAR_COSINE, failing)

    timed = {name: runs[name] for name in (passing or (list(runs) if not enforce_bar else []))}
    if not timed:
        raise EngineError(
            f"{candidates[0]} gives features with mean cosine {cosines[candidates[0]]:.4f} to torch fp32 on "
            f"{len(holdout_paths)} of the dataset's images, below the quality bar {QUALITY_BAR_COSINE}: "
            "use another precision or engine: auto"
        )
    seconds = measure(lambda name: _seconds(timed[name], images), list(timed))
    rates = {name: TRIAL_BATCH / s for name, s in seconds.items()}
    measured = ", ".join(f"{n} {r:.1f} images/s (cosine {cosines.get(n, 1.0):.4f})" for n, r in rates.items())
    where = cpu_description()
    best = pick_fastest(rates, engine)
    reason = f"engine {engine}, precision {precision}: measured on {where}: {measured}; chosen: {best}"
    if failing:
        reason += "; below the quality bar: " + ", ".join(f"{n} (cosine {c:.4f})" for n, c in failing.items())
    if skipped:
        reason += f"; {skipped}"
    kind, chosen = best.split("-")
    model_file = None
    if kind == "openvino":
        import openvino as ov  # OpenVINO on first use: an optional install, slow to import

        ov.save_model(models[best], str(out_dir / OPENVINO_MODEL), compress_to_fp16=False)
        model_file = OPENVINO_MODEL
    calibrated = len(calibration_paths) if chosen == "int8" else 0
    choice = EngineChoice(kind, chosen, reason, cosines, rates, calibrated, model_file,
                          int8_needs_vnni=chosen == "int8" and vnni, **size_record)  # fmt: skip
    log.info("%s", reason)
    _write(out_dir, choice)
    return choice


def int8_not_worth(n_images: int, rates: dict[str, float]) -> str:
    """Why int8 is not calibrated for ``n_images`` at the measured ``rates`` of the other paths ('' where
    it may pay off): int8 cannot save more than the extraction time of the fastest other path."""
    if not rates:
        return ""
    fastest = max(rates, key=rates.__getitem__)
    seconds = n_images / rates[fastest]
    if seconds >= INT8_PAYBACK_S:
        return ""
    return (
        f"int8 not calibrated: {n_images} images take about {seconds:.0f} s at {fastest} "
        f"({rates[fastest]:.0f} images/s), less than the {INT8_PAYBACK_S:.0f} s calibrating could pay back"
    )


def pick_fastest(rates: dict[str, float], engine: str) -> str:
    """The fastest measured path; for engine auto, torch fp32 unless another is MARGIN times as fast."""
    best = max(rates, key=rates.__getitem__)
    if engine == "auto" and best != "torch-fp32" and rates[best] < MARGIN * rates["torch-fp32"]:
        return "torch-fp32"
    return best


def _seconds(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> float:
    start = time.perf_counter()
    run(images)
    return time.perf_counter() - start


def _write(out_dir: Path, choice: EngineChoice) -> None:
    (out_dir / ENGINE_RECORD).write_text(json.dumps(choice.to_json(), indent=2) + "\n")


def vnni_problem(engine: Mapping[str, Any]) -> str | None:
    """Why this CPU cannot run a prepared engine as it was checked (None where it can)."""
    if engine.get("precision") != "int8" or not engine.get("int8_needs_vnni") or cpu_has_vnni():
        return None
    return (
        f"the int8 model was quantized on a CPU with VNNI, and this CPU ({cpu_description()}) has none: its "
        "16-bit int8 sums saturate and the features drift (EfficientNet-Lite0 on Corel-1K: mean cosine 0.95 to "
        "fp32 instead of 0.99)"
    )


def read_engine(folder: str | Path) -> dict[str, Any]:
    """The engine record of a prepared engine folder, with ``model`` made a path inside it."""
    folder = Path(folder)
    try:
        record = json.loads((folder / ENGINE_RECORD).read_text())
    except (OSError, ValueError) as error:
        raise EngineError(f"cannot read the engine record '{folder / ENGINE_RECORD}': {error}") from error
    if record.get("model"):
        record["model"] = str(folder / record["model"])
    return record
