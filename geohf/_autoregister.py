"""Registering geohf with transformers at the moment transformers' Auto machinery is imported.

``import geohf`` has to make ``AutoConfig`` / ``AutoModel`` / ``AutoModelForImageClassification`` /
``AutoImageProcessor`` and ``pipeline("image-geolocation")`` know geohf, but it must stay cheap: the
``geohf`` command and every ``import geohf.<submodule>`` run ``geohf/__init__.py`` first, and
registering needs the model classes (torch, timm, transformers' modeling code: seconds).

So ``geohf/__init__.py`` calls :func:`install`, which

* registers at once if transformers' Auto modules or pipelines are already imported, else
* puts a finder on ``sys.meta_path`` that watches ``transformers.*`` and ``geohf.*`` modules being
  executed. When one finishes, no watched module is still half-executed (so nothing is imported
  from a partially initialised module), and transformers' Auto modules
  (``configuration_auto``, ``modeling_auto``, ``image_processing_auto``) or geohf's model classes are
  loaded, the Auto classes are registered; once ``transformers.pipelines`` is loaded, the pipeline
  too. Those imports load torch already, so registering adds only geohf's own modules. The finder
  removes itself once both are done.

Registering never breaks the user's import: a failure is a warning. :func:`register` does both
eagerly (``geohf.register()``).
"""

from __future__ import annotations

import contextlib
import sys
import threading

AUTO_TRIGGERS = (
    "transformers.models.auto.configuration_auto",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.image_processing_auto",
    "geohf.modeling.configuration_geohf",
    "geohf.modeling.modeling_geohf",
)
PIPELINE_TRIGGERS = ("transformers.pipelines", "geohf.inference.pipeline")

_lock = threading.RLock()
_state = {"auto": False, "pipeline": False, "registering": False, "depth": 0}


def _watched(name: str) -> bool:
    return name == "transformers" or name.startswith(("transformers.", "geohf."))


def _half_executed(exclude: str | None) -> bool:
    """Whether a watched module (other than ``exclude``) is still being executed."""
    for name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        if name not in (exclude, "geohf") and _watched(name) and getattr(spec, "_initializing", False):
            return True
    return False


def _due() -> tuple[bool, bool]:
    auto = not _state["auto"] and any(name in sys.modules for name in AUTO_TRIGGERS)
    pipeline = not _state["pipeline"] and any(name in sys.modules for name in PIPELINE_TRIGGERS)
    return auto, pipeline


def register(auto: bool = True, pipeline: bool = True) -> None:
    """Register the Auto classes and the ``image-geolocation`` pipeline with transformers (idempotent)."""
    with _lock:
        if _state["registering"]:
            return
        _state["registering"] = True
        try:
            if auto and not _state["auto"]:
                from .modeling import register_auto_classes

                register_auto_classes()
                _state["auto"] = True
            if pipeline and not _state["pipeline"]:
                from .inference.pipeline import register_pipeline

                register_pipeline()
                _state["pipeline"] = True
        finally:
            _state["registering"] = False
        if _state["auto"] and _state["pipeline"]:
            _uninstall()


def _maybe_register(just_loaded: str | None) -> None:
    if _state["registering"] or _state["depth"]:
        return
    auto, pipeline = _due()
    if not (auto or pipeline) or _half_executed(just_loaded):
        return
    try:
        register(auto=auto, pipeline=pipeline)
    except Exception as err:  # a registration problem must not break the user's import of transformers
        import warnings

        warnings.warn(f"geohf could not register with transformers: {err!r}", RuntimeWarning, stacklevel=2)
        _uninstall()


class _Finder:
    """A ``sys.meta_path`` entry that finds nothing itself: it wraps the watched modules' ``exec_module``."""

    def find_spec(self, fullname, path=None, target=None):
        if not _watched(fullname):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        execute = getattr(loader, "exec_module", None)
        if execute is None:
            return spec

        def exec_module(module):
            _state["depth"] += 1
            try:
                execute(module)
            finally:
                _state["depth"] -= 1
            _maybe_register(fullname)

        with contextlib.suppress(AttributeError, TypeError):
            loader.exec_module = exec_module  # on this module's own loader instance only
        return spec

    def invalidate_caches(self) -> None:
        pass


_finder = _Finder()


def _uninstall() -> None:
    with contextlib.suppress(ValueError):
        sys.meta_path.remove(_finder)


def install() -> None:
    """Register now if transformers' Auto modules are imported, else watch for them (cheap)."""
    with _lock:
        _maybe_register(None)
        if not (_state["auto"] and _state["pipeline"]) and _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
