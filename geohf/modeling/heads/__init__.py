"""Prediction heads, one kind per module, registered by name (see :mod:`.base`): geocells (``cells``),
haversine-smoothed geocells (``haversine``), cells plus offsets (``hybrid``), countries and regions, coordinate
regression, GeoCLIP gallery matching, a generative flow on the sphere (``flow``, PLONK)."""

from .base import HEADS, Gazetteer, GeoHead, HeadData, build_head, head_kind, head_type, register
from .cells import CellsHead
from .classification import ClassificationHead
from .country import CountryHead, RegionHead
from .flow import FlowHead, FlowSettings
from .geoclip import GeoClipHead, gallery_cells
from .haversine import HaversineHead
from .hybrid import HybridHead
from .regression import RegressionHead

__all__ = [
    "HEADS",
    "CellsHead",
    "ClassificationHead",
    "CountryHead",
    "FlowHead",
    "FlowSettings",
    "Gazetteer",
    "GeoClipHead",
    "GeoHead",
    "HaversineHead",
    "HeadData",
    "HybridHead",
    "RegionHead",
    "RegressionHead",
    "build_head",
    "gallery_cells",
    "head_kind",
    "head_type",
    "register",
]
