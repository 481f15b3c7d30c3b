"""Of one split's PCA sizes, the one whose chosen setting scored highest on validation: what is measured."""

from pathlib import Path

import _package  # noqa: F401  (makes cbir importable)

from cbir.io import write_json
from cbir.pipeline.steps import run_step
from cbir.search.cell import chosen_cell, validation_score


def main(smk) -> None:
    cells = [Path(path).parent for path in smk.input.selections]
    chosen = chosen_cell(cells)
    scores = {cell.name: validation_score(cell) for cell in cells}
    write_json(smk.output.chosen, {"pca": chosen.name, "validation_scores": scores})
    print(f"chosen: PCA {chosen.name} (validation scores: {scores})")


run_step(snakemake, main)
