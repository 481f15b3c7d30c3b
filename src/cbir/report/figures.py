"""matplotlib for the report's figures: pyplot drawing to files, imported at first use, and figures saved atomically."""

from __future__ import annotations

from pathlib import Path

from cbir.io import atomic_path


def pyplot():
    """matplotlib's pyplot, drawing to files only (the Agg backend)."""
    # imported here, not at the top: start-up cost of every snakemake run, which imports the report's registries
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_path: str | Path, dpi: int = 120) -> None:
    """The figure written atomically, in the format of the path's suffix (PNG without one), then closed."""
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=Path(out_path).suffix.lstrip(".") or "png")
    pyplot().close(fig)
