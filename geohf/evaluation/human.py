"""Reading the game's results file (one JSON line per guess) into a table row.

Each line holds the truth, the player's guess and the model's guess on the same image,
both scored (the app appends them, :mod:`geohf.app.results`). :func:`summarise_results`
turns the file into the metrics of :mod:`geohf.evaluation.evaluation` (``country_accuracy``,
``mean_km``, ``geoscore``...), so the human baseline can sit in the same table as the model and the naive baselines.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np

from .metrics import accuracy, distance_summary

WHO = ("player", "model")


def read_results(path: str | os.PathLike) -> tuple[list[dict[str, Any]], int]:
    """The guesses in a results file and how many lines were skipped as unreadable."""
    rows, skipped = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if isinstance(row, dict) and "true_country_code" in row:
                rows.append(row)
            else:
                skipped += 1
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} unreadable lines", stacklevel=2)
    return rows, skipped


def summarise_rows(rows: list[dict[str, Any]], who: str = "player") -> dict[str, float]:
    """Metrics of ``who`` (``player`` or ``model``) over result rows.

    Country accuracy counts every guess (top-5: the truth among up to 5 guessed countries);
    distances count the guesses that gave coordinates (``n_km`` of them).
    """
    if who not in WHO:
        raise ValueError(f"who must be one of {WHO}, got {who!r}")
    if not rows:
        raise ValueError("no guesses to summarise")
    truth = [r["true_country_code"] for r in rows]
    guesses = [r.get(f"{who}_countries") or [""] for r in rows]
    out: dict[str, float] = {
        "n": float(len(rows)),
        "country_accuracy": accuracy([g[0] for g in guesses], truth),
        "country_top5_accuracy": float(100.0 * np.mean([t in g[:5] for t, g in zip(truth, guesses)])),
    }
    km = [r[f"{who}_km"] for r in rows if r.get(f"{who}_km") is not None]
    out["n_km"] = float(len(km))
    if km:
        out.update(distance_summary(km))
    return out


def summarise_results(path: str | os.PathLike, who: str = "player") -> dict[str, float]:
    """The "human" row for ``geohf evaluate`` from a results file (``who="model"``: the model on the same images).

    Keys follow :data:`geohf.evaluation.evaluation.TABLE_COLUMNS` (``country_accuracy``,
    ``mean_km``, ``median_km``, ``within_*km``, ``geoscore``) plus ``country_top5_accuracy``,
    ``n`` (guesses), ``n_km`` (guesses with coordinates) and ``skipped_lines``.
    """
    rows, skipped = read_results(path)
    out = summarise_rows(rows, who)
    out["skipped_lines"] = float(skipped)
    return out
