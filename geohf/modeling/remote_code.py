"""Saving the model code next to the weights, so the folder loads without geohf installed.

``save_pretrained`` writes these modules flat into the folder and an ``auto_map`` into
``config.json``; then
``AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)`` and
``pipeline("image-classification", model=folder, trust_remote_code=True)`` work with only
torch, timm and transformers installed. geohf users never need ``trust_remote_code``:
``import geohf`` registers the same classes locally.
"""

from __future__ import annotations

import os
from pathlib import Path

CODE_FILES = (
    "configuration_geohf.py",
    "modeling_geohf.py",
    "heads.py",
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
_ELSEWHERE = {"sphere.py": "geo/sphere.py", "images.py": "images.py", "files.py": "files.py", "errors.py": "errors.py"}
_FLAT_IMPORTS = {
    "from ..geo.sphere import": "from .sphere import",
    "from ..images import": "from .images import",
    "from ..errors import": "from .errors import",
}


def _source(name: str) -> Path:
    here = Path(__file__).parent
    return here.parent / _ELSEWHERE[name] if name in _ELSEWHERE else here / name


def write_remote_code(folder: str | os.PathLike) -> list[str]:
    """Copy the model code into ``folder`` as flat modules; returns the file names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in CODE_FILES:
        text = _source(name).read_text(encoding="utf-8")
        for packaged, flat in _FLAT_IMPORTS.items():
            text = text.replace(packaged, flat)
        (folder / name).write_text(text, encoding="utf-8")
    return list(CODE_FILES)
