"""geohf: image geolocation on the Hugging Face stack.

``import geohf`` is cheap (no torch, timm or transformers): the ``geohf`` command and every
``import geohf.<submodule>`` (``geohf.geo`` is pure geography) run this file first.

* The public names below are loaded on first access (a module ``__getattr__`` over a
  name → submodule table, as transformers does): ``geohf.GeoModel`` imports
  :mod:`geohf.modeling` then.
* Registering with transformers is explicit, as transformers documents for custom models: the modules
  that define geohf's config, models and image processor register them with the Auto classes when
  imported (``geohf.GeoModel``, ``geohf.GeoModelForImageGeolocation.from_pretrained(folder)``, anything
  that loads a model), and :mod:`geohf.inference.pipeline` registers ``pipeline("image-geolocation")``.
  ``geohf.register()`` does both, for ``AutoModel.from_pretrained(folder)`` or ``pipeline(...)`` in code
  that names no geohf class. ``import geohf`` alone registers nothing (it would cost torch).
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING

from ._version import __version__

# public name -> module that defines it (some are being added; a missing one is an AttributeError)
_LAZY = {
    "GeoConfig": "geohf.modeling",
    "GeoImageProcessor": "geohf.modeling",
    "GeoModel": "geohf.modeling",
    "GeoModelForImageGeolocation": "geohf.modeling",
    "GeoModelOutput": "geohf.modeling",
    "build_model": "geohf.modeling",
    "create_model": "geohf.create",
    "HeadSpec": "geohf.modeling",
    "ImageGeolocationPipeline": "geohf.inference.pipeline",
    "GeoTrainer": "geohf.training",
    "GeoTrainingArguments": "geohf.training",
    "predict": "geohf.inference",
    "GeoPredictor": "geohf.inference",
    "GeoPredictions": "geohf.inference",
    "GeoIndex": "geohf.inference",
    "evaluate": "geohf.evaluation",
    "Evaluation": "geohf.evaluation",
    "load_boundaries": "geohf.geo.boundaries",
    "PointLabeller": "geohf.geo.labelling",
}

__all__ = sorted(_LAZY) + ["__version__", "register"]
_NOT_PUBLIC = {"TYPE_CHECKING", "annotations"}

if TYPE_CHECKING:
    from .create import create_model  # noqa: F401
    from .evaluation import Evaluation, evaluate  # noqa: F401
    from .geo.boundaries import load_boundaries  # noqa: F401
    from .geo.labelling import PointLabeller  # noqa: F401
    from .inference import GeoPredictions, GeoPredictor, predict  # noqa: F401
    from .inference.pipeline import ImageGeolocationPipeline  # noqa: F401
    from .modeling import (  # noqa: F401
        GeoConfig,
        GeoImageProcessor,
        GeoModel,
        GeoModelForImageGeolocation,
        GeoModelOutput,
        HeadSpec,
        build_model,
    )
    from .training import GeoTrainer, GeoTrainingArguments  # noqa: F401


def __getattr__(name: str) -> object:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'geohf' has no attribute {name!r}")
    try:
        module = _importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("geohf"):
            raise  # a third-party dependency is missing: not ours to hide
        raise AttributeError(f"geohf.{name} is not available in this version of geohf ({err})") from err
    value = getattr(module, name, None)
    if value is None or type(value) is type(_importlib):  # absent, or only a submodule of the same name
        raise AttributeError(f"geohf.{name} is not available in this version of geohf (not in {module_name})")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({name for name in globals() if not name.startswith("_") and name not in _NOT_PUBLIC} | set(_LAZY))


def register() -> None:
    """Register geohf's Auto classes (``AutoConfig``, ``AutoModel``, ``AutoModelForImageClassification``,
    ``AutoImageProcessor``) and the ``image-geolocation`` pipeline with transformers (idempotent; loads torch)."""
    from .inference.pipeline import register_pipeline

    register_pipeline()
