"""Evaluation above inference: metrics, model-vs-baselines evaluation, reports, the game's human row;
the names load on first use."""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {
    "Evaluation": ".evaluation",
    "evaluate": ".evaluation",
    "tune_coordinate_rule": ".evaluation",
    "tune_retrieval": ".evaluation",
}
__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
