"""Saving the model code next to the weights, so the folder loads without geohf installed.

``save_pretrained`` writes these modules flat into the folder and an ``auto_map`` into
``config.json``; then
``AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)`` and
``pipeline("image-classification", model=folder, trust_remote_code=True)`` work with only
torch, timm and transformers installed. geohf users never need ``trust_remote_code``: geohf's own
modules register the same classes locally when imported (``geohf.register()``); the copies here register nothing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def _head_modules() -> tuple[str, ...]:
    """The modules of the ``heads`` package, saved flat as ``heads_<name>.py`` (its ``__init__`` as ``heads.py``)."""
    here = Path(__file__).parent
    if (here / "heads").is_dir():
        return tuple(sorted(p.stem for p in (here / "heads").glob("*.py") if p.stem != "__init__"))
    return tuple(sorted(p.stem.removeprefix("heads_") for p in here.glob("heads_*.py")))  # saved flat already


HEAD_MODULES = _head_modules()
CODE_FILES = (
    "configuration_geohf.py",
    "head_names.py",
    "modeling_geohf.py",
    "heads.py",
    *(f"heads_{name}.py" for name in HEAD_MODULES),
    "location_encoder.py",
    "losses.py",
    "fusion.py",
    "backbones.py",
    "towers.py",
    "finetuning.py",
    "image_processing_geohf.py",
    "remote_code.py",
    "sphere.py",
    "images.py",
    "downloads.py",
    "files.py",
    "errors.py",
)
# The processor's entry lives in config.json, and preprocessor_config.json names no class: an
# auto_map there makes transformers derive a remote *video* processor and ask every pipeline user
# to trust remote code, geohf installed or not.
MODEL_AUTO_MAP = {
    "AutoConfig": "configuration_geohf.GeoConfig",
    "AutoModel": "modeling_geohf.GeoModel",
    "AutoModelForImageClassification": "modeling_geohf.GeoModelForImageGeolocation",
    "AutoImageProcessor": "image_processing_geohf.GeoImageProcessor",
}


# modules that live elsewhere in the package, and how their imports read once flat
_ELSEWHERE = {
    "sphere.py": "geo/sphere.py",
    "images.py": "images.py",
    "downloads.py": "downloads.py",
    "files.py": "files.py",
    "errors.py": "errors.py",
    "heads.py": "modeling/heads/__init__.py",
    **{f"heads_{name}.py": f"modeling/heads/{name}.py" for name in HEAD_MODULES},
}
_FLAT_IMPORTS = {
    "from ..geo.sphere import": "from .sphere import",
    "from ..images import": "from .images import",
    "from ..errors import": "from .errors import",
}
_SIBLING = re.compile(r"^(\s*)from \.(?=\w)", re.MULTILINE)  # from .x import: a module of the same package
_PARENT = re.compile(r"^(\s*)from \.\.(?=\w)", re.MULTILINE)  # from ..x import: one package up
_GRANDPARENT = re.compile(r"^(\s*)from \.\.\.(?=\w)", re.MULTILINE)


def _source(name: str) -> Path:
    package = Path(__file__).parent.parent
    return package / _ELSEWHERE[name] if name in _ELSEWHERE else package / "modeling" / name


def _flat(name: str, text: str) -> str:
    """``text`` of module ``name`` with its imports as they read once every module is flat in one folder."""
    heads = name.startswith("heads")  # modeling/heads/x.py: siblings are heads_<x>, the rest one package up
    if heads:
        text = _GRANDPARENT.sub(r"\1from ..", _SIBLING.sub(r"\1from .heads_", text))
    for packaged, flat in _FLAT_IMPORTS.items():
        text = text.replace(packaged, flat)
    return _PARENT.sub(r"\1from .", text) if heads else text


def write_remote_code(folder: str | os.PathLike) -> list[str]:
    """Copy the model code into ``folder`` as flat modules; returns the file names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in CODE_FILES:
        (folder / name).write_text(_flat(name, _source(name).read_text(encoding="utf-8")), encoding="utf-8")
    return list(CODE_FILES)
