"""The simulated user of relevance feedback (cbir.evaluation.feedback) and feedback.csv (cbir.report.feedback)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cbir.evaluation.feedback import feedback_key, simulate_feedback
from cbir.evaluation.ranking import QuerySample, exact_rank_figures
from cbir.report.feedback import feedback_table
from cbir.search.feedback import FeedbackSettings


def labelled_blobs(seed: int = 1, per_class: int = 50, spread: float = 2.4):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 6)) * 2.0
    labels = np.repeat(np.arange(4), per_class)
    vectors = centres[labels] + rng.normal(scale=spread, size=(len(labels), 6))
    return vectors, labels


def run(rounds: int = 2, **settings):
    vectors, labels = labelled_blobs()
    queries, gallery = vectors[::5], np.delete(vectors, np.s_[::5], axis=0)
    query_labels, gallery_labels = labels[::5], np.delete(labels, np.s_[::5])
    relevant = query_labels[:, None] == gallery_labels[None, :]
    sample = QuerySample.of(query_labels, np.arange(len(query_labels)))
    out = simulate_feedback(queries, gallery, relevant, sample, normalised=False,
                            settings=FeedbackSettings(**settings), rounds=rounds)  # fmt: skip
    return out, queries, gallery, relevant


def test_round_0_is_the_exact_search_the_evaluation_reports():
    out, queries, gallery, relevant = run()
    exact = exact_rank_figures(queries, gallery, relevant, precision_at=(10,))
    for method in ("rocchio", "learned"):
        for ranking in ("full", "residual"):  # nothing marked yet: the residual ranking is the whole one
            assert np.isclose(out[feedback_key(method, 0, ranking, "precision_at_10")], exact["precision_at_10"].mean())
            assert np.isclose(out[feedback_key(method, 0, ranking, "map")], exact["ap"].mean())


def test_feedback_improves_the_ranking_and_the_residual_leaves_the_marked_out():
    out, *_ = run()
    for method in ("rocchio", "learned"):
        start = out[feedback_key(method, 0, "full", "precision_at_10")]
        assert out[feedback_key(method, 1, "full", "precision_at_10")] > start
        assert out[feedback_key(method, 1, "full", "map")] > out[feedback_key(method, 0, "full", "map")]
        # the marked relevant images count in the full ranking only: it is at least as good as the residual one
        assert (
            out[feedback_key(method, 1, "full", "precision_at_10")]
            >= out[feedback_key(method, 1, "residual", "precision_at_10")]
        )
        assert out[feedback_key(method, 2, "full", "map") + "_ci95"] > 0
    assert out["feedback_queries"] == 40 and out["feedback_rounds"] == 2 and out["feedback_marked_per_round"] == 10


def test_residual_figures_by_hand():
    # one query, gallery of 4 on a line; relevant: rows 0 and 2; nearest first: 0, 1, 2, 3
    gallery = np.array([[1.0], [2.0], [3.0], [4.0]])
    relevant = np.array([[True, False, True, False]])
    sample = QuerySample.of(np.array([0]), np.array([0]))
    out = simulate_feedback(np.array([[0.0]]), gallery, relevant, sample, normalised=False,
                            settings=FeedbackSettings(method="rocchio", alpha=1.0, beta=0.0, gamma=0.0),
                            rounds=1, marked_per_round=1)  # fmt: skip
    # round 0: AP = (1/1 + 2/3) / 2; round 1 marks row 0 (relevant); the query does not move (beta 0):
    # full ranking unchanged; residual: 1, 2, 3 with row 2 the only relevant one left, at rank 2
    assert np.isclose(out[feedback_key("rocchio", 0, "full", "map")], (1 + 2 / 3) / 2)
    assert np.isclose(out[feedback_key("rocchio", 1, "full", "map")], (1 + 2 / 3) / 2)
    assert np.isclose(out[feedback_key("rocchio", 1, "residual", "map")], 1 / 2)
    assert np.isclose(out[feedback_key("rocchio", 1, "residual", "precision_at_10")], 1 / 10)


def test_feedback_csv_has_one_row_per_cell_space_method_round_and_ranking():
    out, *_ = run(rounds=1)
    cell = {"dataset": "d", "backbone": "b", "split": "80-20", "pca": "50", "k": 3}
    spaces = pd.DataFrame([{**cell, "space": "raw", "chosen": False, **out},
                           {**cell, "space": "lda", "chosen": "True", **out},
                           {**cell, "space": "l2", "chosen": False}])  # fmt: skip
    table = feedback_table(spaces)
    assert len(table) == 2 * 2 * 2 * 2  # spaces with figures x methods x rounds x rankings
    assert set(table["space"]) == {"raw", "lda"}
    assert table.loc[table["space"] == "lda", "chosen"].all() and not table.loc[table["space"] == "raw", "chosen"].any()
    row = table[(table["space"] == "raw") & (table["method"] == "learned") & (table["round"] == 1)
                & (table["ranking"] == "residual")].iloc[0]  # fmt: skip
    assert row["precision_at_10"] == out[feedback_key("learned", 1, "residual", "precision_at_10")]
    assert row["map_ci95"] == out[feedback_key("learned", 1, "residual", "map") + "_ci95"]
    assert row["queries"] == 40


def test_the_simulated_user_refines_in_the_paper_space_and_the_chosen_one_unless_asked_for_all():
    from types import SimpleNamespace

    from cbir.evaluation.evaluate import feedback_measured

    chosen_lda = SimpleNamespace(chosen="lda")
    settings = {"rounds": 3, "eval_queries": 500}
    assert [feedback_measured(settings, space, chosen_lda) for space in ("raw", "lda", "whiten", "mlp")] == [
        True, True, False, False]  # fmt: skip
    assert all(feedback_measured({**settings, "eval_spaces": "all"}, s, chosen_lda) for s in ("raw", "whiten"))
    assert feedback_measured(settings, "whiten", None)  # no validation: nothing chosen, every space
    searched = {**settings, "eval_spaces": "searched"}  # cbir index: only where its queries refine
    measured = [feedback_measured(searched, space, chosen_lda) for space in ("raw", "lda", "whiten")]
    assert measured == [False, True, False]
    assert feedback_measured(searched, "raw", None) and not feedback_measured(searched, "lda", None)
    assert not feedback_measured(None, "raw", chosen_lda) and not feedback_measured({}, "lda", chosen_lda)
