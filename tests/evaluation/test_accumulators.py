"""Metrics merged from per-batch accumulators (``geohf evaluate --engine ray``) equal the whole split's."""

from __future__ import annotations

import numpy as np
import pytest


def test_accumulators_merged_in_any_order_give_the_whole_splits_metrics():
    """Distances, cell hits and country / region counts accumulated per batch and merged (in any order) give
    what the whole split's metrics functions give."""
    from geohf.evaluation.accumulators import MetricsAccumulator, merge_all
    from geohf.evaluation.metrics import distance_summary, hierarchy_metrics

    rng = np.random.default_rng(0)
    n = 103
    errors = rng.exponential(2000, n)
    true_class = rng.integers(-1, 8, n)
    ranked = rng.integers(0, 8, (n, 5))
    countries = np.array(["", "FR", "DE", "IT"], dtype=object)
    pred_c, true_c = countries[rng.integers(1, 4, n)], countries[rng.integers(0, 4, n)]
    pred_r, true_r = countries[rng.integers(1, 4, n)], countries[rng.integers(0, 4, n)]
    parts = []
    for start in range(0, n, 10):
        rows = slice(start, start + 10)
        acc = MetricsAccumulator(start, classes=8, ranked=5)
        hits = {k: (ranked[rows, :k] == true_class[rows, None]).any(1) for k in (1, 5)}
        acc.add(errors[rows], true_class[rows], hits, pred_c[rows], true_c[rows], pred_r[rows], true_r[rows])
        parts.append(acc)
    rng.shuffle(parts)
    # what crosses between Ray workers: JSON (data, never code), the same accumulator back, bit for bit
    parts = [MetricsAccumulator.from_json(p.to_json()) for p in parts]
    got = merge_all(parts).metrics()
    known = true_class >= 0
    expected = distance_summary(errors) | hierarchy_metrics(pred_c, true_c, pred_r, true_r)
    for k in (1, 5):
        expected[f"cell_top{k}_accuracy"] = float(100.0 * (ranked[known, :k] == true_class[known, None]).any(1).mean())
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    again = MetricsAccumulator.from_json(parts[0].to_json())
    assert again.to_json() == parts[0].to_json() and again.hits == parts[0].hits
    assert all(np.array_equal(a, b) for a, b in zip(again.errors_km, parts[0].errors_km))
