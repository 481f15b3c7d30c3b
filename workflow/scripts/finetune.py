"""Fine-tune a backbone on one split's training images (never its test images), early-stopped on the validation
part that validation draws from them, into a safetensors weights file and its record."""

import hashlib
import logging
from pathlib import Path

import numpy as np

import _package  # noqa: F401  (makes cbir importable)

from cbir.data.manifest import read_manifest
from cbir.data.split import split_ids
from cbir.evaluation.validation import validation_rows
from cbir.extraction.finetune import FinetuneError, FinetuneSettings, finetune
from cbir.extraction.registry import BackboneSpec
from cbir.pipeline.steps import run_step


def training_content_hash(ids, hashes) -> str:
    """One SHA-256 of the training images' ids and contents: what the fine-tuned weights were trained on."""
    digest = hashlib.sha256()
    for image_id, content in sorted(zip(ids, hashes, strict=True)):
        digest.update(f"{image_id}\t{content}\n".encode())
    return digest.hexdigest()


def main(smk) -> None:
    try:
        fine_tune_split(smk)
    except FinetuneError as error:  # the user's to fix, and the message says how: one line, no traceback
        logging.getLogger("cbir.finetune").error("rule finetune failed: %s", error)
        raise SystemExit(1) from None


def fine_tune_split(smk) -> None:
    manifest = read_manifest(smk.input.manifest).set_index("id")
    train = manifest.loc[split_ids(smk.input.split, "train")]
    classes, labels = np.unique(train["label"].to_numpy(), return_inverse=True)
    rows = validation_rows(labels, smk.params.validation_fraction, smk.params.seed)
    if rows is None:
        raise FinetuneError(
            f"fine-tuning {smk.wildcards.backbone} on {smk.wildcards.dataset} {smk.wildcards.split}: the training "
            f"split ({len(train)} images, {len(classes)} classes) is too small for a validation part at "
            f"validation.fraction {smk.params.validation_fraction} to stop the training early; add images, or raise "
            "validation.fraction"
        )
    weights = Path(smk.output.weights)
    finetune(
        BackboneSpec.from_config(smk.params.backbone),
        [Path(path) for path in train["path"]],
        labels,
        rows[1],
        FinetuneSettings.from_mapping(smk.params.finetune),
        out_weights=weights,
        out_record=Path(smk.output.record),
        checkpoint_dir=weights.with_name(weights.stem + ".checkpoint"),
        seed=smk.params.seed,
        device=smk.params.device,
        threads=smk.threads,
        record_extra={
            "dataset": smk.wildcards.dataset,
            "backbone": smk.wildcards.backbone,
            "split": smk.wildcards.split,
            "classes": [int(c) for c in classes],
            "training_images_sha256": training_content_hash(train.index, train["sha256"].astype(str)),
        },
    )


run_step(snakemake, main)
