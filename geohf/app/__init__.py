"""The Gradio app (``geohf app``): predictions for uploaded images and the human-vs-model game.

Gradio is imported only by :mod:`geohf.app.ui`; the game logic and the results file
work without it.
"""

from .cli import add_app_parser
from .results import append_result

__all__ = ["add_app_parser", "append_result"]
