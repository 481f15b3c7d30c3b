"""Figures of a bounded evaluation are reported with their intervals beside them."""

import pandas as pd

from cbir.report.metrics import columns_with_intervals, with_chosen_rerank
from cbir.report.tables import _queries_note


def test_each_figure_is_printed_with_its_interval_where_it_has_one():
    rows = pd.DataFrame({
        "map_global": [0.9531, float("nan")], "map_global_ci95": [0.0071, 0.01],
        "recall_at_5_vs_exact_clustered": [0.8, 0.7],  # no interval: a share of the exact search's results
    })  # fmt: skip
    table = columns_with_intervals(rows, {"mAP": "map_global", "recall": "recall_at_5_vs_exact_clustered"})
    assert table["mAP"].tolist()[0] == "0.953 ± 0.007" and table["mAP"].tolist()[1] is None
    assert table["recall"].tolist() == ["0.800", "0.700"]


def test_the_chosen_reranking_takes_its_interval_along():
    spaces = pd.DataFrame({
        "map_global": [0.80, 0.70], "map_global_ci95": [0.02, 0.03],
        "map_global_reranked": [0.85, float("nan")], "map_global_reranked_ci95": [0.01, float("nan")],
    })  # fmt: skip
    moved = with_chosen_rerank(spaces)
    assert moved["map_global"].tolist() == [0.85, 0.70] and moved["map_global_ci95"].tolist() == [0.01, 0.03]
    assert moved["map_global_plain"].tolist() == [0.80, 0.70] and moved["map_global_plain_ci95"].tolist() == [
        0.02,
        0.03,
    ]
    assert "map_global_reranked" not in moved and "map_global_reranked_ci95" not in moved


def test_the_tables_say_how_many_test_images_were_measured():
    sampled = pd.DataFrame({"n_queries_evaluated": [2000, 2000], "n_test": [14000, 14000]})
    assert "2000 of 14000 test images, drawn in proportion to each class" in _queries_note(sampled)
    every = pd.DataFrame({"n_queries_evaluated": [360], "n_test": [360]})
    assert "all 360 test images" in _queries_note(every) and "95 % confidence interval" in _queries_note(every)
