"""The head kinds by name, without torch (the command line lists them in its help).

Each name is a class registered in :mod:`geohf.modeling.heads` (one file per kind), and maps to the
``type`` its :class:`~geohf.modeling.configuration_geohf.HeadSpec` carries in ``config.json``: the
``cells``, ``country`` and ``region`` kinds are all ``classification`` heads there.
"""

from __future__ import annotations

HEAD_KINDS = {
    "haversine": "haversine",
    "cells": "classification",
    "hybrid": "hybrid",
    "regression": "regression",
    "country": "classification",
    "region": "classification",
    "geoclip": "geoclip",
    "flow": "flow",
}
HEAD_NAMES = tuple(HEAD_KINDS)
HEAD_TYPES = tuple(dict.fromkeys(sorted(HEAD_KINDS.values(), key=lambda t: t != "classification")))
