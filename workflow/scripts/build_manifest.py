"""Index a dataset through its source (image folder, Corel, GHIM, CIFAR-10, VOC) into the manifest."""

import logging
from pathlib import Path

import _package  # noqa: F401  (makes cbir importable)

from cbir.data.ignore import ignored_summary, ignoring
from cbir.data.inspection import FileRecords
from cbir.data.manifest import accept_manifest, excluded_file_count, write_manifest
from cbir.data.sources import build_manifest, get_source
from cbir.pipeline.steps import run_step


def main(smk) -> None:
    source, entry, root, images = smk.params.source, smk.params.entry, Path(smk.params.root), Path(smk.params.images)
    log = logging.getLogger("cbir.data.manifest")
    records = FileRecords.load(smk.params.file_records, shards=smk.input.scans)
    with ignoring(smk.params.ignore):  # data.ignore's patterns, besides the built-in kinds (cbir.data.ignore)
        manifest = build_manifest(
            source, entry, root, images, records=records, workers=smk.threads, rejected_csv=smk.params.rejected
        )
    # saved before the checks below: what the files hold stays true even if the manifest is refused
    records.save(smk.params.file_records)
    where = smk.params.file_records + (f" and {len(smk.input.scans)} scan shards" if smk.input.scans else "")
    log.info("manifest: %s", records.summary(where))
    # the folder every image must lie in: the images the workflow exported (CIFAR-10), or the dataset's files
    inside = get_source(source).images_folder(entry, root, images)
    # read from the config, not a param: changing the limit re-indexes nothing that passed it
    limit = smk.config["data"]["max_excluded_fraction"]
    fraction = accept_manifest(manifest, inside, max_excluded_fraction=limit, rejected_csv=smk.params.rejected)
    write_manifest(manifest, smk.output.manifest, smk.output.excluded, smk.output.ignored)
    log.info("%d images in %d classes", len(manifest.images), len(manifest.classes))
    ignored = ignored_summary(manifest.ignored)
    if ignored:
        log.info("ignored, as no photos: %s; listed per folder and kind in %s", ignored, smk.output.ignored)
    n_excluded = excluded_file_count(manifest.excluded)
    if n_excluded:
        log.warning(
            "%d file(s) excluded (%.1f%% of the files, limit %g), listed with the reason in %s",
            n_excluded,
            100 * fraction,
            limit,
            smk.output.excluded,
        )


run_step(snakemake, main)
