"""Fine-tuning a backbone on the labels of a training split (issue #30): the weights extraction then loads.

The paper uses the ConvNet as a fixed feature extractor; the other transfer-learning strategy trains
it further on the new dataset. :func:`finetune` trains the backbone's trunk, with a classification
head on its pooled features, on the training split's images only, stops early on the retrieval mAP
of held-out rows of that split, and writes the best epoch's weights as a state dict of the whole
model (the head left out), which ``BackboneSpec(arch, weights=<file>)`` loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as save_weights
from torch import nn

from cbir.data.images import file_sha256
from cbir.extraction.finetune_checkpoint import Progress, remove_checkpoint, resume, save_checkpoint, tensors_of
from cbir.extraction.finetune_data import AUGMENTATION, TrainingImages, batches, retrieval_map
from cbir.extraction.finetune_heads import head_loss, make_head
from cbir.extraction.finetune_settings import (
    FinetuneError,
    FinetuneSettings,
    check_finetune_input,
    probe_side,
    probe_trunk,
    training_device,
)
from cbir.extraction.layers import FeatureNetwork
from cbir.extraction.preprocess import preprocessing_description, transform_from_description
from cbir.extraction.registry import BackboneSpec, get_backbone
from cbir.hardware import cpu_hardware
from cbir.io import atomic_path, library_versions

__all__ = ["FinetuneError", "FinetuneSettings", "check_finetune_input", "finetune"]

LOG = logging.getLogger(__name__)
# the new head starts from random weights: it learns this many times faster than the pretrained trunk
HEAD_LR_FACTOR = 10.0


def epoch_seed(seed: int, epoch: int, purpose: int) -> int:
    """A seed of its own for each (seed, epoch, purpose): an epoch's randomness does not depend on a resume."""
    return int(np.random.SeedSequence([seed, epoch, purpose]).generate_state(1)[0])


MODEL_RNG, SHUFFLE_RNG, HEAD_INIT = 0, 1, 2


@dataclass
class _Training:
    """A model, its head and optimizer, and the split's images: one epoch's training and its evaluation."""

    model: nn.Module  # as entry.build() made it: its state dict is what is saved
    network: FeatureNetwork
    head: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    images: TrainingImages
    labels: np.ndarray
    train_rows: np.ndarray
    validation_rows: np.ndarray
    frozen: list[nn.Module]
    settings: FinetuneSettings
    device: torch.device
    precision: str
    seed: int
    described: dict[str, Any]  # what the record says of the training besides its epochs

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return batch.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        return batch

    def train_epoch(self, epoch: int) -> tuple[float, int, float]:
        """One pass over the trained rows: the mean loss, the images trained on and the seconds taken."""
        started = time.perf_counter()
        torch.manual_seed(epoch_seed(self.seed, epoch, MODEL_RNG))  # augmentation, drop-connect, dropout
        shuffle = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, SHUFFLE_RNG))
        order = self.train_rows[torch.randperm(len(self.train_rows), generator=shuffle).numpy()]
        chunks = batches(order, self.settings.batch_size)
        if len(chunks) > 1 and len(chunks[-1]) < 2:  # batch normalisation cannot train on one image
            chunks = chunks[:-1]
        self.network.train()
        self.head.train()
        for module in self.frozen:
            module.eval()  # a frozen block keeps its batch-norm statistics too
        total_loss, seen = 0.0, 0
        for rows in chunks:
            images = self.to_device(self.images.batch(rows, train=True))
            labels = torch.from_numpy(self.labels[rows]).to(self.device)
            with self.autocast():
                features = self.network(images)
            with torch.autocast(self.device.type, enabled=False):
                loss = head_loss(self.settings, self.head(features.float(), labels), labels)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            total_loss += float(loss.detach()) * len(rows)
            seen += len(rows)
        return total_loss / max(seen, 1), seen, time.perf_counter() - started

    def embed(self, rows: np.ndarray) -> torch.Tensor:
        """Pooled features (float32, CPU) of ``rows`` in eval mode, without augmentation."""
        self.network.eval()
        parts = []
        with torch.inference_mode():
            for chunk in batches(rows, self.settings.batch_size):
                with self.autocast():
                    parts.append(self.network(self.to_device(self.images.batch(chunk, train=False))).float().cpu())
        return torch.cat(parts)

    def evaluate(self) -> tuple[float, float]:
        """The validation rows' mAP against the trained rows, and the head's accuracy on them."""
        features = self.embed(np.concatenate([self.validation_rows, self.train_rows]))
        validation, trained = features[: len(self.validation_rows)], features[len(self.validation_rows) :]
        labels = self.labels[self.validation_rows]
        mean_ap = retrieval_map(validation.numpy(), labels, trained.numpy(), self.labels[self.train_rows])
        self.head.eval()
        with torch.inference_mode():
            predicted = self.head(validation.to(self.device)).argmax(dim=1).cpu().numpy()
        return mean_ap, float(np.mean(predicted == labels))


def finetune(
    spec: BackboneSpec,
    paths: Sequence[Path],
    labels: np.ndarray,
    validation_rows: np.ndarray,
    settings: FinetuneSettings,
    *,
    out_weights: Path,
    out_record: Path,
    checkpoint_dir: Path,
    seed: int = 0,
    device: str = "auto",
    threads: int | None = None,
    record_extra: Mapping[str, Any] = MappingProxyType({}),
    log: logging.Logger | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``spec``'s backbone on ``paths`` (a training split) and their ``labels``; return the record.

    ``validation_rows`` (rows of ``paths``) are held out: each epoch ranks them against the trained rows, and
    training stops after ``settings.patience`` epochs without a better mAP. ``out_weights`` (safetensors) gets
    the best epoch's state dict of the whole model as ``entry.build()`` names it (the base weights where no
    epoch beat them on validation), ``out_record`` the JSON record, both written atomically. A checkpoint in
    ``checkpoint_dir`` after every epoch lets an interrupted run resume where it stopped, with the result of
    an uninterrupted run (on the CPU, fp32); it is removed at the end. Raises :class:`FinetuneError` before
    any training where the input or settings cannot work. ``class_names``: the names of the class indices,
    for the messages.
    """
    log = log or LOG
    paths, labels, validation_rows = [Path(p) for p in paths], np.asarray(labels), np.asarray(validation_rows)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        training = _prepare(spec, paths, labels, validation_rows, settings, seed, training_device(device),
                            class_names, _where(record_extra), log)  # fmt: skip
        key = _checkpoint_key(training.described["base"], settings, seed, paths, labels, validation_rows,
                              training.described["n_classes"])  # fmt: skip
        progress, best_model, resumed_after = _start(training, checkpoint_dir, key, log)
        best_model = _train(training, progress, best_model, checkpoint_dir, key, log)
        # validation chose no fine-tuning: the base weights are written (extraction then gives the frozen features)
        kept_base = progress.best_map is not None and progress.best_map <= (progress.base_validation_map or -1.0)
        if kept_base:
            entry = get_backbone(spec.arch)
            torch.manual_seed(seed)  # as the training's base: random weights depend on the seed
            entry.load_weights(base := entry.build(), spec.weights)
            best_model = tensors_of(base.state_dict(), "")
        record = {
            **training.described,
            "settings": settings.as_dict(),
            "seed": seed,
            "threads": torch.get_num_threads(),
            "base_validation_map": progress.base_validation_map,
            "epochs": progress.history,
            "best_epoch": progress.best_epoch,
            "best_validation_map": progress.best_map,
            "stopped_early": progress.epoch < settings.epochs,
            "kept_base_weights": kept_base,
            "resumed_after_epoch": resumed_after,
            "library_versions": library_versions(),
            **record_extra,
        }
        metadata = {"format": "pt", "cbir_finetune_base": json.dumps(training.described["base"])}
        with atomic_path(out_weights) as partial:  # through bytes: the file gets the umask's permissions, not 0600
            partial.write_bytes(save_weights(best_model, metadata=metadata))
        with atomic_path(out_record) as partial:
            partial.write_text(json.dumps(record, indent=2, default=str) + "\n")
        remove_checkpoint(Path(checkpoint_dir))
        return record
    finally:
        torch.set_num_threads(previous_threads)


def _where(record_extra: Mapping[str, Any]) -> str:
    """The training split, as the messages name it."""
    split = f" ({record_extra['split']})" if "split" in record_extra else ""
    return (
        f"the training split{split} of {record_extra['dataset']}" if "dataset" in record_extra else "the training split"
    )


def _prepare(
    spec: BackboneSpec,
    paths: list[Path],
    labels: np.ndarray,
    validation_rows: np.ndarray,
    settings: FinetuneSettings,
    seed: int,
    device: torch.device,
    class_names: Sequence[str] | None,
    where: str,
    log: logging.Logger,
) -> _Training:
    """The base model with its head and optimizer, its input checked (:func:`check_finetune_input`) first."""
    if len(paths) != len(labels):
        raise FinetuneError(f"fine-tuning got {len(paths)} images but {len(labels)} labels")
    if missing := [str(path) for path in paths if not path.is_file()]:
        raise FinetuneError(f"{len(missing)} images of {where} are missing, e.g. {missing[:3]}: run the split again")
    entry = get_backbone(spec.arch)
    image_size = settings.image_size or spec.image_size
    torch.manual_seed(seed)  # as build_backbone: random base weights depend on the seed
    model = entry.build()
    trunk = entry.trunk(model)
    probe = probe_trunk(trunk, probe_side(spec, image_size))
    check_finetune_input(labels, validation_rows, settings, spec, device, class_names=class_names, where=where,
                         probe=probe)  # fmt: skip
    entry.load_weights(model, spec.weights)
    pooling = "avg" if spec.pooling == "none" else spec.pooling  # the head needs one vector per image
    network = FeatureNetwork(trunk, pooling, entry.layer, entry.mean, entry.std, gem_p=spec.gem_p)
    frozen_blocks = probe.blocks[: settings.freeze_until]
    for _, parameters, _ in frozen_blocks:
        for parameter in parameters:
            parameter.requires_grad_(False)
    block_names, frozen_names = [name for name, _, _ in probe.blocks], [name for name, _, _ in frozen_blocks]
    log.info("fine-tuning %s: trunk blocks %s; frozen: %s", spec.arch, ", ".join(block_names),
             ", ".join(frozen_names) or "none")  # fmt: skip
    n_classes = max(int(labels.max()) + 1, len(class_names or ()))
    torch.manual_seed(epoch_seed(seed, 0, HEAD_INIT))
    head = make_head(settings, probe.channels, n_classes)
    precision = _precision(device)
    if device.type == "cuda":
        network.to(device, memory_format=torch.channels_last)
    head.to(device)
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in network.parameters() if p.requires_grad]},
            {"params": list(head.parameters()), "lr": settings.lr * HEAD_LR_FACTOR},
        ],
        lr=settings.lr,
        weight_decay=settings.weight_decay,
    )
    description = preprocessing_description(replace(spec, image_size=image_size), network)
    images = TrainingImages(paths, transform_from_description(description), image_size, augment=settings.augment)
    train_rows = np.setdiff1d(np.arange(len(paths)), validation_rows)
    described = {
        "base": {**asdict(spec), **_weights_identity(spec)},
        "trained_pooling": pooling,
        **({"pooling_note": "pooling none: trained on avg-pooled features"} if spec.pooling == "none" else {}),
        "image_size": image_size,
        "head": {"loss": settings.loss, "lr": settings.lr * HEAD_LR_FACTOR, "saved": False},
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_hardware(),
        "precision": precision,
        "preprocessing": description,
        "augmentation": AUGMENTATION if settings.augment else None,
        "decoded_images_cached": images.cached,
        "blocks": block_names,
        "frozen_blocks": frozen_names,
        "n_train": len(train_rows),
        "n_validation": len(validation_rows),
        "n_classes": n_classes,
    }
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    return _Training(model, network, head, optimizer, scaler, images, labels.astype(np.int64), train_rows,
                     validation_rows.astype(np.int64), [m for _, _, modules in frozen_blocks for m in modules],
                     settings, device, precision, seed, described)  # fmt: skip


def _start(
    training: _Training, checkpoint_dir: Path, key: str, log: logging.Logger
) -> tuple[Progress, dict[str, torch.Tensor] | None, int | None]:
    """The progress to go on from (a checkpoint's, or the base weights' validation mAP), the best weights so
    far, and the epoch resumed after (None: a fresh start)."""
    resumed = resume(Path(checkpoint_dir), key, training.model, training.head, training.optimizer,
                     training.settings.epochs, log)  # fmt: skip
    if resumed is None:
        progress = Progress(base_validation_map=training.evaluate()[0])
        log.info("fine-tuning: validation mAP of the base weights %.4f", progress.base_validation_map)
        return progress, None, None
    progress, best_model = resumed
    if training.scaler is not None and progress.scaler:
        training.scaler.load_state_dict(progress.scaler)
    return progress, best_model or tensors_of(training.model.state_dict(), ""), progress.epoch


def _train(
    training: _Training,
    progress: Progress,
    best_model: dict[str, torch.Tensor] | None,
    checkpoint_dir: Path,
    key: str,
    log: logging.Logger,
) -> dict[str, torch.Tensor]:
    """The epochs after ``progress``, until ``settings.epochs`` or early stopping: the best epoch's state dict."""
    settings = training.settings
    for epoch in range(progress.epoch + 1, settings.epochs + 1):
        if progress.epochs_since_best >= settings.patience:
            break
        started = time.perf_counter()
        loss, trained, train_seconds = training.train_epoch(epoch)
        validation_map, accuracy = training.evaluate()
        progress.history.append({
            "epoch": epoch, "train_loss": loss, "validation_map": validation_map, "validation_accuracy": accuracy,
            "seconds": time.perf_counter() - started, "train_seconds": train_seconds,
            "images_per_second": trained / train_seconds if train_seconds > 0 else None,
        })  # fmt: skip
        progress.epoch = epoch
        if progress.improved(validation_map):
            progress.best_epoch, progress.best_map, progress.epochs_since_best = epoch, validation_map, 0
            best_model = tensors_of(training.model.state_dict(), "")
        else:
            progress.epochs_since_best += 1
        progress.scaler = training.scaler.state_dict() if training.scaler is not None else None
        save_checkpoint(Path(checkpoint_dir), key, progress, training.model, training.head, training.optimizer,
                        None if progress.best_epoch == epoch else best_model)  # fmt: skip
        row = progress.history[-1]
        log.info("fine-tuning epoch %d/%d: loss %.4f, validation mAP %.4f (best %.4f, epoch %d), accuracy %.3f, "
                 "%.1f s, %.1f images/s", epoch, settings.epochs, loss, validation_map, progress.best_map,
                 progress.best_epoch, accuracy, row["seconds"], row["images_per_second"] or 0.0)  # fmt: skip
    base_map, best_map = progress.base_validation_map, progress.best_map
    if base_map is not None and best_map is not None and best_map <= base_map:
        log.warning("fine-tuning did not improve on the validation mAP of the base weights (%.4f; best epoch %.4f)",
                    base_map, best_map)  # fmt: skip
    # None only where no epoch had a finite mAP (no validation query with a relevant trained image)
    return best_model if best_model is not None else tensors_of(training.model.state_dict(), "")


def _precision(device: torch.device) -> str:
    """fp32 on the CPU (reproducible); bf16 autocast on a GPU that has it, else fp16 with a gradient scaler."""
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _weights_identity(spec: BackboneSpec) -> dict[str, str]:
    """The content hash of a local base-weights file (named weights are identified by their name)."""
    path = Path(spec.weights)
    return {"weights_sha256": file_sha256(path)} if path.suffix and path.is_file() else {}


def _checkpoint_key(
    base: dict[str, Any],
    settings: FinetuneSettings,
    seed: int,
    paths: Sequence[Path],
    labels: np.ndarray,
    validation_rows: np.ndarray,
    n_classes: int,
) -> str:
    """What decides every epoch's result: a checkpoint of another key is not resumed.

    ``epochs`` and ``patience`` are left out: they decide where training stops, not what an epoch computes.
    """
    trained = {key: value for key, value in settings.as_dict().items() if key not in ("epochs", "patience")}
    digest = hashlib.sha256()
    digest.update(json.dumps({"base": base, "settings": trained, "seed": seed,
                              "n_classes": n_classes}, sort_keys=True).encode())  # fmt: skip
    digest.update("\0".join(str(path) for path in paths).encode())
    digest.update(np.asarray(labels, dtype=np.int64).tobytes())
    digest.update(np.sort(np.asarray(validation_rows, dtype=np.int64)).tobytes())
    return digest.hexdigest()
