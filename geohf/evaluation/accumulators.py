"""Metrics of a split merged from accumulators of its batches (``geohf evaluate --engine ray``): each keeps its
rows' great-circle errors (the median needs all N of them), cell hits and (true, predicted) country and region
counts, never probabilities. Merged in row order they give the numbers :meth:`Guesses.metrics` gives for the
whole split."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .metrics import distance_summary

HIT_KS = (1, 3, 5, 10)


@dataclass
class MetricsAccumulator:
    """One method's running metrics over some rows of a split.

    ``first_row``: the split's index of the first row added (accumulators merge in row order);
    ``classes``: the primary head's class count; ``ranked``: how many classes each row ranks (0: a regression
    head ranks none); ``top_ks``: the cell accuracies counted (top-3 / top-10 only for the model's own row).
    """

    first_row: int
    classes: int
    ranked: int
    top_ks: tuple[int, ...] = (1, 5)
    errors_km: list[np.ndarray] = field(default_factory=list)
    rows: int = 0
    known: int = 0
    hits: Counter = field(default_factory=Counter)
    country: Counter = field(default_factory=Counter)
    region: Counter = field(default_factory=Counter)

    def to_json(self) -> str:
        """The accumulator as JSON (what crosses between Ray workers: data, never code)."""
        return json.dumps(
            {
                "first_row": self.first_row, "classes": self.classes, "ranked": self.ranked,
                "top_ks": list(self.top_ks), "errors_km": [e.tolist() for e in self.errors_km], "rows": self.rows,
                "known": self.known, "hits": [[k, v] for k, v in self.hits.items()],
                "country": [[t, p, n] for (t, p), n in self.country.items()],
                "region": [[t, p, n] for (t, p), n in self.region.items()],
            }
        )  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> MetricsAccumulator:
        d = json.loads(text)
        return cls(
            d["first_row"], d["classes"], d["ranked"], tuple(d["top_ks"]),
            [np.asarray(e, dtype=np.float64) for e in d["errors_km"]], d["rows"], d["known"],
            Counter({int(k): v for k, v in d["hits"]}), Counter({(t, p): n for t, p, n in d["country"]}),
            Counter({(t, p): n for t, p, n in d["region"]}),
        )  # fmt: skip

    def add(
        self,
        error_km: np.ndarray,
        true_class: np.ndarray,
        hits: dict[int, np.ndarray],
        pred_country,
        true_country,
        pred_region,
        true_region,
    ) -> None:
        """A batch: the errors of its rows whose truth has coordinates; per row the true class (-1: unknown), the
        ``hits`` per k of :attr:`top_ks` (top-1 and top-5 from the ranked classes, top-3 and top-10 from the
        probabilities, as :func:`~geohf.evaluation.evaluate` counts them), the named and true country and region
        ('' unknown)."""
        self.errors_km.append(np.asarray(error_km, dtype=np.float64))
        self.rows += len(true_class)
        known = np.asarray(true_class) >= 0
        self.known += int(known.sum())
        for k, hit in hits.items():
            self.hits[k] += int(np.asarray(hit)[known].sum())
        self.country.update(_pairs(pred_country, true_country))
        self.region.update(_pairs(pred_region, true_region))

    def merge(self, other: MetricsAccumulator) -> MetricsAccumulator:
        """The rows of both (``other`` after ``self`` when it starts later)."""
        first, second = (self, other) if self.first_row <= other.first_row else (other, self)
        return MetricsAccumulator(
            first.first_row, self.classes, self.ranked, self.top_ks, first.errors_km + second.errors_km,
            self.rows + other.rows, self.known + other.known, self.hits + other.hits, self.country + other.country,
            self.region + other.region,
        )  # fmt: skip

    def metrics(self) -> dict[str, float]:
        """The metrics of :meth:`Guesses.metrics` plus the model's top-3 / top-10 cell accuracy."""
        errors = np.concatenate(self.errors_km) if self.errors_km else np.empty(0)
        out = distance_summary(errors) if errors.size else {}
        if self.known and self.ranked:
            for k in (1, 5):
                out[f"cell_top{k}_accuracy"] = 100.0 * (self.hits[k] / self.known)
        for level, pairs in (("country", self.country), ("region", self.region)):
            total = sum(pairs.values())
            if total:
                out[f"{level}_accuracy"] = 100.0 * (sum(n for (t, p), n in pairs.items() if t == p) / total)
                out[f"{level}_balanced_accuracy"] = _balanced(pairs)
        if self.known and self.ranked:
            for k in (3, 10):
                if k in self.top_ks and k <= self.classes:
                    out[f"cell_top{k}_accuracy"] = 100.0 * (self.hits[k] / self.known)
        return out


def _pairs(pred, true) -> Counter:
    """(true, predicted) counts over the rows whose truth is known ('' unknown)."""
    pred = np.asarray(pred, dtype=object).astype(str)
    true = np.asarray(true, dtype=object).astype(str)
    known = true != ""
    return Counter(zip(true[known].tolist(), pred[known].tolist()))


def _balanced(pairs: Counter) -> float:
    """Mean per-class recall (%) over the true classes, in sorted order (as ``balanced_accuracy``)."""
    support, correct = Counter(), Counter()
    for (t, p), n in pairs.items():
        support[t] += n
        correct[t] += n if t == p else 0
    return float(100.0 * np.mean([correct[c] / support[c] for c in sorted(support)]))


def merge_all(accumulators: list[MetricsAccumulator]) -> MetricsAccumulator:
    """Every accumulator merged in row order."""
    ordered = sorted(accumulators, key=lambda a: a.first_row)
    total = ordered[0]
    for a in ordered[1:]:
        total = total.merge(a)
    return total
