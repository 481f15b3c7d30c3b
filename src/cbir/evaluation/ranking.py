"""Ranking figures at a cost that grows with the work: a bounded sample of queries, ranks without sorting.

- :func:`stratified_sample`: at most ``n`` queries, seeded, in proportion to each class (all when fewer);
- :class:`QuerySample`: those queries' weights, and a figure's mean with its 95 % confidence interval;
- :func:`relevant_ranks`: each query's ranks of its relevant gallery images, from one sort of its distances
  (no argsort, no gather of the whole ranking);
- :func:`rank_figures`: average precision over the whole ranking, AP@k and P@k from those ranks.

Ties are ranked as a stable sort of the distances would rank them: by gallery position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbir.distances import squared_distances

PRECISION_AT = (5, 10, 20)
Z_95 = 1.959963984540054  # the standard normal's 97.5 % quantile
DISTANCE_BLOCK_ELEMENTS = 1 << 24  # distances held at once: a (queries, gallery) block of 128 MB in float64


def stratified_sample(strata: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Rows (ascending) of a seeded sample of ``n`` rows drawn in proportion to each stratum's size (largest
    remainders, so that the sizes add up to ``n``; every stratum keeps at least one row while ``n`` allows);
    every row when ``n`` is 0 or at least the number of rows."""
    strata = np.asarray(strata)
    if n <= 0 or n >= len(strata):
        return np.arange(len(strata))
    values, counts = np.unique(strata, return_counts=True)
    share = counts * n / len(strata)
    take = np.floor(share).astype(np.int64)
    if n >= len(values):  # no stratum left out: the small ones first get one row each
        take = np.maximum(take, 1)
    shortfall = n - int(take.sum())
    if shortfall > 0:
        remainders = np.where(take < counts, share - np.floor(share), -1.0)
        take[np.argsort(-remainders, kind="stable")[:shortfall]] += 1
    elif shortfall < 0:  # the ones added above: taken back from the largest allocations
        for position in np.argsort(-take, kind="stable")[:-shortfall]:
            take[position] -= 1
    rng = np.random.default_rng([seed, n])
    chosen = [
        rng.choice(np.flatnonzero(strata == value), size, replace=False)
        for value, size in zip(values, take, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


@dataclass(frozen=True)
class QuerySample:
    """The queries a figure is computed on: their stratum (the class) and how many queries each stratum holds
    in all. A figure is the stratified mean (each class weighted by its share of all queries), which equals the
    plain mean when every query is evaluated; its interval is the normal one of a stratified sample."""

    strata: np.ndarray  # the sampled queries' strata
    totals: dict[int, int]  # queries per stratum in all (sampled or not)

    @classmethod
    def of(cls, all_strata: np.ndarray, rows: np.ndarray) -> QuerySample:
        values, counts = np.unique(np.asarray(all_strata), return_counts=True)
        return cls(np.asarray(all_strata)[rows], {int(v): int(c) for v, c in zip(values, counts, strict=True)})

    @property
    def n_total(self) -> int:
        return sum(self.totals.values())

    def mean_and_interval(self, values: np.ndarray) -> tuple[float, float]:
        """The stratified mean of per-query ``values`` and the half-width of its 95 % confidence interval: the
        figure's uncertainty as an estimate of the quality on images like the test images (its spread over
        queries), so it does not shrink to 0 when every query is evaluated. NaN for no queries."""
        values = np.asarray(values, dtype=np.float64)
        if len(values) == 0:
            return float("nan"), float("nan")
        mean, variance = 0.0, 0.0
        for stratum, total in self.totals.items():
            part = values[self.strata == stratum]
            if len(part) == 0:
                continue
            weight = total / self.n_total
            mean += weight * part.mean()
            if len(part) > 1:
                variance += weight**2 * part.var(ddof=1) / len(part)
        return float(mean), float(Z_95 * np.sqrt(variance))


def relevant_ranks(distances: np.ndarray, relevant: np.ndarray) -> list[np.ndarray]:
    """Per row of ``distances`` (queries, candidates): the 1-based ranks, ascending, of its ``relevant`` candidates
    in the row's order by (distance, candidate position), as a stable sort ranks them.

    One sort of the row's distances (values only) and a binary search of its relevant candidates' sorted
    distances; in a row where a relevant candidate shares its distance with another, the tied ones count before
    it by gallery position."""
    ordered = np.sort(distances, axis=1)
    out = []
    for values, sorted_values, is_relevant in zip(distances, ordered, relevant, strict=True):
        found = np.sort(values[is_relevant])
        before = np.searchsorted(sorted_values, found, side="left")
        following = sorted_values[np.minimum(before + 1, len(sorted_values) - 1)]
        if not np.any((before + 1 < len(sorted_values)) & (following == found)):
            out.append(before + 1)  # no relevant distance shared: its rank is 1 + the distances below it
            continue
        columns = np.flatnonzero(is_relevant)
        found = values[columns]
        order = np.argsort(found, kind="stable")
        columns, found = columns[order], found[order]
        before = np.searchsorted(sorted_values, found, side="left")
        tied = np.searchsorted(sorted_values, found, side="right") - before > 1
        for i in np.flatnonzero(tied):  # equal distances: the candidates at a lower position come first
            before[i] += int(np.count_nonzero(values[: columns[i]] == found[i]))
        out.append(np.sort(before + 1))
    return out


def rank_figures(
    ranks: Sequence[np.ndarray], n_relevant: np.ndarray, precision_at: Sequence[int] = PRECISION_AT, top_k: int = 0
) -> dict[str, np.ndarray]:
    """Per query, from the ascending 1-based ``ranks`` of the relevant images it was ranked (possibly not all of
    its ``n_relevant``: the others were not ranked at all):

    - ``ap``: average precision over the whole ranking, normalised by all ``n_relevant`` (0 without any);
    - ``precision_at_<k>``: the share of the first k results that are relevant;
    - ``ap_at_<top_k>`` (when ``top_k``): AP of the first ``top_k`` results, normalised by min(top_k, n_relevant).
    """
    n = len(ranks)
    out = {"ap": np.zeros(n)} | {f"precision_at_{k}": np.zeros(n) for k in precision_at}
    if top_k:
        out[f"ap_at_{top_k}"] = np.zeros(n)
    for row, found in enumerate(ranks):
        found = np.asarray(found, dtype=np.float64)
        precision = np.arange(1, len(found) + 1) / found  # the precision at each relevant result
        total = float(n_relevant[row])
        if total > 0:
            out["ap"][row] = precision.sum() / total
            if top_k:
                out[f"ap_at_{top_k}"][row] = precision[found <= top_k].sum() / min(top_k, total)
        for k in precision_at:
            out[f"precision_at_{k}"][row] = np.count_nonzero(found <= k) / k
    return out


def exact_rank_figures(
    queries: np.ndarray,
    gallery: np.ndarray,
    relevant: np.ndarray,
    *,
    precision_at: Sequence[int] = PRECISION_AT,
    top_k: int = 0,
    n_relevant: np.ndarray | None = None,
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    """:func:`rank_figures` of the exact Euclidean ranking of ``gallery`` by each query (both in the searched
    space), a block of queries at a time; ``relevant``: (queries, gallery) True where relevant; ``n_relevant``:
    each query's relevant images in all, when the gallery is a part of what it could find (its own count).
    ``device`` ``cuda``: the distances and ranks on the GPU (:func:`cuda_relevant_ranks`)."""
    counts = relevant.sum(axis=1) if n_relevant is None else np.asarray(n_relevant)
    if device.startswith("cuda"):
        return rank_figures(cuda_relevant_ranks(queries, gallery, relevant, device), counts, precision_at, top_k)
    gallery_sq_norms = np.einsum("ij,ij->i", gallery, gallery)
    block = max(1, DISTANCE_BLOCK_ELEMENTS // max(1, len(gallery)))
    ranks: list[np.ndarray] = []
    for first in range(0, len(queries), block):
        rows = slice(first, first + block)
        ranks.extend(relevant_ranks(squared_distances(queries[rows], gallery, gallery_sq_norms), relevant[rows]))
    return rank_figures(ranks, counts, precision_at, top_k)


def cuda_relevant_ranks(
    queries: np.ndarray, gallery: np.ndarray, relevant: np.ndarray, device: str
) -> list[np.ndarray]:
    """:func:`relevant_ranks` of the exact ranking on a GPU: per block of queries, the distances (float64), one
    stable sort of each row, and the ranks of its relevant images read off the sorted order (ties as on the CPU)."""
    import torch  # only here: a CPU evaluation never pays for importing torch

    gallery_t = torch.as_tensor(np.asarray(gallery, dtype=np.float64), device=device)
    sq_norms = (gallery_t * gallery_t).sum(dim=1)
    block = max(1, 4 * DISTANCE_BLOCK_ELEMENTS // max(1, len(gallery)))
    positions = torch.arange(1, len(gallery) + 1, device=device)
    out: list[np.ndarray] = []
    for first in range(0, len(queries), block):
        query_t = torch.as_tensor(np.asarray(queries[first : first + block], dtype=np.float64), device=device)
        distances = (query_t * query_t).sum(dim=1, keepdim=True) - 2.0 * query_t @ gallery_t.T + sq_norms
        order = torch.sort(distances.clamp_min_(0.0), dim=1, stable=True).indices
        ranked_relevant = torch.as_tensor(relevant[first : first + block], device=device).gather(1, order)
        for row in range(len(order)):  # the ranks (1-based) at which its relevant images come
            out.append(positions[ranked_relevant[row]].cpu().numpy())
    return out


def evaluation_device(requested: str = "auto") -> str:
    """``cuda`` when asked for, or for ``auto`` when this machine has an NVIDIA driver and torch sees a GPU (torch
    is imported only then); else ``cpu``."""
    if requested != "auto":
        return requested
    if not Path("/proc/driver/nvidia/version").exists():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
