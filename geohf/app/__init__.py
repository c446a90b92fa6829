"""The Gradio app (``geohf app``): predictions for uploaded images and the human-vs-model game.

Gradio is imported only by :mod:`geohf.app.ui`; the game logic and the results file
work without it. The names load on first use (``geohf``'s parser imports :mod:`.cli` only).
"""

from __future__ import annotations

import importlib

_LAZY = {"add_app_parser": ".cli", "append_result": ".results"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
