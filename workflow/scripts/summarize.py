"""Gather every grid cell's metrics into the summary tables, plots and report pages, and the datasets' counts."""

import logging

import _package  # noqa: F401  (makes cbir importable)

from cbir.pipeline.steps import run_step
from cbir.report.datasets import write_dataset_summary
from cbir.report.summary import write_summary


def main(smk) -> None:
    # the outputs the rule declares, keyed by what they hold
    tables = dict(zip(map(tuple, smk.params.tables), smk.output.tables, strict=True))
    plots = dict(zip(smk.params.plots, smk.output.plots, strict=True))
    pages = {
        tuple(key): path
        for output, keys in smk.params.pages.items()
        for key, path in zip(keys, getattr(smk.output, output), strict=True)
    }
    table = write_dataset_summary(
        smk.params.datasets, smk.input.manifests, smk.input.excluded, smk.input.duplicates, smk.output.datasets
    )
    write_summary(
        smk.input.metrics,
        smk.output.metrics,
        tables,
        plots,
        pages,
        settings=smk.params.settings,
        datasets=table,
        space_metric_paths=smk.input.space_metrics,
        spaces_csv=smk.output.spaces,
        feedback_csv=smk.output.feedback,
    )
    log = logging.getLogger("cbir.summarize")
    for row in table.itertuples():
        if row.excluded or row.duplicates_across_classes or row.empty_classes:
            log.warning(
                "dataset %s: %d file(s) excluded, %d empty class folder(s), %d image(s) duplicated across classes "
                "(results/%s/excluded.csv, duplicates.csv)",
                row.dataset,
                row.excluded,
                row.empty_classes,
                row.duplicates_across_classes,
                row.dataset,
            )


run_step(snakemake, main)
