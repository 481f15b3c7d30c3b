"""Of one split's PCA sizes, the one whose chosen setting scored highest on validation: what is measured."""

from pathlib import Path

import _package  # noqa: F401  (makes cbir importable)

from cbir.fitting.chosen import read_selection
from cbir.io import write_json
from cbir.pipeline.steps import run_step
from cbir.search.cell import chosen_cell


def main(smk) -> None:
    cells = [Path(path).parent for path in smk.input.selections]
    chosen = chosen_cell(cells)
    scores = {}
    for cell in cells:
        selection = read_selection(cell)
        scores[cell.name] = selection.score() if selection is not None and selection.validated else None
    write_json(smk.output.chosen, {"pca": chosen.name, "validation_scores": scores})
    print(f"chosen: PCA {chosen.name} (validation scores: {scores})")


run_step(snakemake, main)
