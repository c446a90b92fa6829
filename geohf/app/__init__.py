"""The Gradio app (``geohf app``): predictions for uploaded images and the human-vs-model game.

Gradio is imported only by :mod:`geohf.app.ui`; the game logic and the results file
work without it. The names load on first use (the command is :mod:`geohf.commands.app`).
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {"append_result": ".results"}
__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
