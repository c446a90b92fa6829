"""Coherent answers: a prediction's coordinates, country and region agree.

A cell head's coordinates average several cells, while its best cell names one country: the
two can disagree (a weighted point in Canada named "Greenland", or at sea). Here every
prediction names the admin area its coordinates lie in (:class:`~geohf.geo.places.AdminAreas`,
geohf's shipped boundaries), in one of two ways (``GeoConfig.answer``):

* ``point``: the coordinates decide; a point at sea moves to the nearest land;
* ``hierarchical``: country first (the sum of its cells' probabilities), then the region of that
  country with the most probability, then the probability-weighted point of that region's best
  cells, moved inside the region when it falls outside.

Either way the country's probability is the sum of the probabilities of its classes. (``cell``, the
raw head output naming its best class's majority country, is not made coherent: it is kept to
compare against.)
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..geo.places import AdminAreas
from ..geo.sphere import spherical_mean
from .predictions import CellTable, GeoPredictions


def _sums(probs: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(names, (N, K) probability of each name): class probabilities summed by ``codes`` ('' left out)."""
    names, inverse = np.unique(codes.astype(str), return_inverse=True)
    onehot = np.zeros((codes.shape[0], names.shape[0]))
    onehot[np.arange(codes.shape[0]), inverse] = 1.0
    keep = names != ""
    return names[keep], probs @ onehot[:, keep]


def _weighted_point(probs: np.ndarray, members: np.ndarray, cells: CellTable, top_k: int) -> tuple[float, float]:
    """The probability-weighted spherical mean of the ``top_k`` most probable ``members`` with centroids."""
    members = members[np.isfinite(cells.latitude[members])]
    if not members.size:
        return np.nan, np.nan
    best = members[np.argsort(-probs[members], kind="stable")[:top_k]]
    weights = probs[best] if probs[best].sum() > 0 else np.ones(best.size)
    lat, lon = spherical_mean(cells.latitude[best], cells.longitude[best], weights=weights)
    return float(lat), float(lon)


def hierarchical_targets(
    probs: np.ndarray, cells: CellTable, areas: AdminAreas, top_k: int = 5
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Per row: the point of the most probable region of the most probable country, and the area rows
    it must lie in (the region's, or the country's when the classes name no region)."""
    n = probs.shape[0]
    lat, lon = np.full(n, np.nan), np.full(n, np.nan)
    allowed = [np.zeros(0, dtype=np.int64)] * n
    countries, country_p = _sums(probs, cells.country_code)
    if not countries.size:
        return lat, lon, allowed
    region_codes = np.asarray(cells.region_code, dtype=object).astype(str)
    for i, c in enumerate(np.argmax(country_p, axis=1)):
        country = countries[c]
        members = np.flatnonzero(cells.country_code.astype(str) == country)
        regions, region_p = _sums(probs[i : i + 1, members], region_codes[members])
        rows = np.zeros(0, dtype=np.int64)
        if regions.size:
            region = regions[int(np.argmax(region_p[0]))]
            members = members[region_codes[members] == region]
            rows = areas.rows_of_region(region)
        if not rows.size:
            rows = areas.rows_of_country(country)
        lat[i], lon[i] = _weighted_point(probs[i], members, cells, top_k)
        allowed[i] = rows
    return lat, lon, allowed


def coherent(
    predictions: GeoPredictions,
    answer: str = "point",
    top_k: int = 5,
    areas: AdminAreas | None = None,
    keep: bool = False,
) -> GeoPredictions:
    """``predictions`` naming the country and region their coordinates lie in (see the module docstring);
    ``top_k``: cells averaged into the hierarchical point; ``keep``: a hierarchical answer keeps the given
    coordinates where they already lie in the chosen area (a retrieval-refined point)."""
    areas = areas or AdminAreas.default()
    lat, lon = predictions.pred_latitude, predictions.pred_longitude
    n = len(predictions)
    allowed = [np.zeros(0, dtype=np.int64)] * n
    probs = predictions.probs
    has_classes = probs is not None and probs.shape[1] > 0
    if answer == "hierarchical" and has_classes:
        h_lat, h_lon, allowed = hierarchical_targets(probs, predictions.cells, areas, top_k)
        use = np.isfinite(h_lat)
        if keep:
            inside = areas.containing(lat, lon)
            use &= np.array([row not in ok for row, ok in zip(inside, allowed)], dtype=bool)
        lat, lon = np.where(use, h_lat, lat), np.where(use, h_lon, lon)
    elif answer not in ("point", "hierarchical"):
        raise ValueError(f"answer must be 'point' or 'hierarchical', got {answer!r}")
    lat, lon, rows = areas.place(lat, lon, allowed)
    country_score = np.full(n, np.nan)
    if has_classes:
        countries, country_p = _sums(probs, predictions.cells.country_code)  # (N, countries), summed once
        named = areas.table.lookup("country_code", rows).astype(str)
        column = np.searchsorted(countries, named).clip(max=max(len(countries) - 1, 0))
        found = (countries[column] == named) if countries.size else np.zeros(n, dtype=bool)
        country_score = np.where(found, country_p[np.arange(n), column] if countries.size else 0.0, 0.0)
    return replace(
        predictions,
        pred_latitude=lat,
        pred_longitude=lon,
        area_row=rows,
        country_score=country_score,
        areas=areas.table,
    )
