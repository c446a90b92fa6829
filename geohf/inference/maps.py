"""Interactive maps of predictions (folium): points, confidence radii, ground truth, cell probabilities.

As in the usual error maps: the predicted point, the true point and a line between them;
for a single image, every cell shaded by its probability (rescaled so the best cell is
opaque), or circles at the cell centroids when the model has no cell polygons.

Two kinds of HTML: by default it loads Leaflet (and folium's other scripts) from their CDNs and
the OpenStreetMap tiles when opened; ``offline=True`` inlines the Leaflet shipped in
``geohf/inference/static/`` (BSD-2-Clause) and draws the country outlines of geohf's boundaries
instead of tiles, so the file opens with no network. Building either needs no network.
"""

from __future__ import annotations

import html
import logging
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_path
from ..geo.sphere import haversine_km
from .predictions import CellTable
from .predictor import GeoPredictor

logger = logging.getLogger(__name__)

PREDICTED, TRUTH, ERROR_LINE, CELLS = "#e6550d", "#31a354", "#3182bd", "#cb181d"


@dataclass
class MapPoint:
    """One prediction on the map, with its ground truth when known."""

    name: str
    latitude: float
    longitude: float
    radius_km: float | None = None
    truth: tuple[float, float] | None = None
    label: str = ""

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> MapPoint | None:
        """From a ``geohf predict`` record (``None`` when it has no coordinates)."""
        if record.get("pred_latitude") is None or record.get("pred_longitude") is None:
            return None
        truth = None
        for prefix in ("true", "exif"):
            lat, lon = record.get(f"{prefix}_latitude"), record.get(f"{prefix}_longitude")
            if lat is not None and lon is not None:
                truth = (float(lat), float(lon))
                break
        place = ", ".join(x for x in (record.get("pred_region"), record.get("pred_country")) if x)
        score = record.get("score")
        label = f"{place} ({100 * score:.1f}%)" if score is not None else place
        return cls(
            name=str(record.get("file") or record.get("location_id") or ""),
            latitude=float(record["pred_latitude"]),
            longitude=float(record["pred_longitude"]),
            radius_km=record.get("radius_km"),
            truth=truth,
            label=label,
        )

    @property
    def error_km(self) -> float | None:
        if self.truth is None:
            return None
        return float(haversine_km(self.truth[0], self.truth[1], self.latitude, self.longitude))

    def popup(self) -> str:
        lines = [f"<b>{html.escape(self.name)}</b>", html.escape(self.label)]
        lines.append(f"predicted {self.latitude:.4f}, {self.longitude:.4f}")
        if self.radius_km is not None:
            lines.append(f"50% radius {self.radius_km:,.0f} km")
        if self.truth is not None:
            lines.append(f"true {self.truth[0]:.4f}, {self.truth[1]:.4f}: error {self.error_km:,.0f} km")
        return "<br>".join(lines)


def _short_way(lon_from: float, lon_to: float) -> float:
    """``lon_to`` shifted by ±360° so a line from ``lon_from`` takes the short way round."""
    return lon_to + 360.0 * round((lon_from - lon_to) / 360.0)


def cell_polygons(predictor: GeoPredictor):
    """The primary head's cell polygons (GeoDataFrame in class order) for a choropleth, or ``None``.

    ``None`` when the model has no ``cells/<name>.parquet`` beside its weights or when
    that partition's cells are not the model's classes.
    """
    partition = predictor.model.cell_partitions.get(predictor.model.config.head().partition)
    if partition is None:
        return None
    if partition.names != list(predictor.cells.names):
        logger.warning("the model's cell polygons do not match its classes; drawing circles at the centroids")
        return None
    return partition.cells


def _add_cell_probabilities(
    fmap, cells: CellTable, probs: np.ndarray, polygons=None, min_share: float = 1e-3, legend: bool = True
):
    """Cells shaded by probability (polygons) or circles at their centroids sized by it; ``legend``: the colour
    scale too (branca draws it with d3 from a CDN, so offline maps go without)."""
    import branca.colormap
    import folium

    probs = np.asarray(probs, dtype=np.float64)
    top = float(probs.max()) if probs.size else 0.0
    if top <= 0:
        return
    scale = branca.colormap.LinearColormap(["#fee5d9", CELLS], vmin=0.0, vmax=top, caption="cell probability")
    keep = np.flatnonzero(probs >= min_share * top)
    layer = folium.FeatureGroup(name="cell probability")
    if polygons is not None:
        frame = polygons.iloc[keep][["name", "geometry"]].copy()
        frame["probability"] = probs[keep]
        frame["percent"] = [f"{100 * p:.2f}%" for p in probs[keep]]
        frame["geometry"] = frame.geometry.simplify(0.05)
        folium.GeoJson(
            frame.to_json(),
            style_function=lambda f: {
                "fillColor": scale(f["properties"]["probability"]),
                "fillOpacity": 0.1 + 0.7 * f["properties"]["probability"] / top,
                "color": CELLS,
                "weight": 0.5,
            },
            tooltip=folium.GeoJsonTooltip(["name", "percent"], aliases=["cell", "probability"]),
        ).add_to(layer)
    else:
        for j in keep:
            if not (np.isfinite(cells.latitude[j]) and np.isfinite(cells.longitude[j])):
                continue
            share = probs[j] / top
            folium.CircleMarker(
                [float(cells.latitude[j]), float(cells.longitude[j])],
                radius=3 + 17 * math.sqrt(share),
                color=CELLS,
                weight=0.5,
                fill=True,
                fill_color=scale(probs[j]),
                fill_opacity=0.15 + 0.6 * share,
                tooltip=f"{html.escape(cells.names[j])}: {100 * probs[j]:.2f}%",
            ).add_to(layer)
    layer.add_to(fmap)
    if legend:
        scale.add_to(fmap)


@dataclass
class LikelihoodGrid:
    """A flow head's log-density (per steradian) of one image on a lat/lon grid: ``log_density[i, j]`` at
    ``latitudes[i], longitudes[j]``, every ``resolution_deg`` degrees."""

    latitudes: np.ndarray
    longitudes: np.ndarray
    log_density: np.ndarray
    resolution_deg: float


def flow_likelihood(predictor: GeoPredictor, images, resolution_deg: float = 10.0) -> LikelihoodGrid | None:
    """The likelihood grid of one place under the model's primary head when it is a flow head
    (:meth:`~geohf.modeling.heads.flow.FlowHead.likelihood_grid`), else ``None``. ``images``: a PIL image or
    array, or a list of them (views of the place): their mixture, as the head pools the views' samples."""
    import torch

    head = predictor.model.heads[predictor.model.config.primary_head]
    if not hasattr(head, "likelihood_grid"):
        return None
    views = list(images) if isinstance(images, (list, tuple)) else [images]
    pixels = predictor.processor.pixel_values(views).to(predictor.device)
    with torch.inference_mode():
        embeddings = predictor.model.geo(pixels).embeddings
    grids = [head.likelihood_grid(embedding, resolution_deg) for embedding in embeddings]
    lats, lons = grids[0][0], grids[0][1]
    logp = np.logaddexp.reduce(np.stack([g[2] for g in grids]), axis=0) - math.log(len(grids))
    return LikelihoodGrid(lats, lons, logp, resolution_deg)


def _add_likelihood(fmap, grid: LikelihoodGrid, min_share: float = 1e-3, legend: bool = True) -> None:
    """Grid cells shaded by the density around their point (those above ``min_share`` of the highest)."""
    import branca.colormap
    import folium

    density = np.exp(grid.log_density - np.nanmax(grid.log_density))  # relative to the highest
    scale = branca.colormap.LinearColormap(["#fee5d9", CELLS], vmin=0.0, vmax=1.0, caption="relative likelihood")
    half = grid.resolution_deg / 2
    layer = folium.FeatureGroup(name="likelihood")
    for i, lat in enumerate(grid.latitudes):
        for j, lon in enumerate(
            grid.longitudes[:-1] if grid.longitudes[-1] - grid.longitudes[0] >= 360 else grid.longitudes
        ):
            share = float(density[i, j])
            if not share >= min_share:
                continue
            bounds = [[max(lat - half, -90.0), lon - half], [min(lat + half, 90.0), lon + half]]
            folium.Rectangle(
                bounds,
                color=None,
                weight=0,
                fill=True,
                fill_color=scale(share),
                fill_opacity=0.1 + 0.6 * share,
                tooltip=f"{lat:.0f}, {lon:.0f}: log-density {grid.log_density[i, j]:.2f} per sr",
            ).add_to(layer)
    layer.add_to(fmap)
    if legend:
        scale.add_to(fmap)


def prediction_map(
    points: list[MapPoint],
    cells: CellTable | None = None,
    probs: np.ndarray | None = None,
    polygons=None,
    tiles: str = "OpenStreetMap",
    offline: bool = False,
    likelihood: LikelihoodGrid | None = None,
):
    """A folium map of predictions: points, 50% confidence circles, ground truth and error lines.

    With ``cells`` and ``probs`` (one image's primary-head probabilities) the cells are
    drawn too: ``polygons`` (a GeoDataFrame in class order) shaded by probability, or
    circles at the centroids when it is ``None``. ``likelihood``: a flow head's grid for one image, shaded.
    ``offline``: no CDN scripts and no tiles (see the module).
    """
    import folium

    fmap = folium.Map(location=[20, 0], zoom_start=2, tiles=None if offline else tiles, world_copy_jump=True)
    if offline:
        _make_offline(fmap)
    if cells is not None and probs is not None:
        _add_cell_probabilities(fmap, cells, probs, polygons, legend=not offline)
    if likelihood is not None:
        _add_likelihood(fmap, likelihood, legend=not offline)
    radius = folium.FeatureGroup(name="confidence radius (50%)")
    predicted = folium.FeatureGroup(name="predictions")
    truth = folium.FeatureGroup(name="ground truth")
    errors = folium.FeatureGroup(name="errors")
    for p in points:
        if p.radius_km is not None and p.radius_km > 0:
            folium.Circle(
                [p.latitude, p.longitude],
                radius=1000 * p.radius_km,
                color=PREDICTED,
                weight=1,
                fill=True,
                fill_opacity=0.08,
                tooltip=f"50% radius: {p.radius_km:,.0f} km",
            ).add_to(radius)
        folium.CircleMarker(
            [p.latitude, p.longitude],
            radius=6,
            color=PREDICTED,
            fill=True,
            fill_opacity=0.9,
            popup=folium.Popup(p.popup(), max_width=320),
            tooltip=html.escape(p.name),
        ).add_to(predicted)
        if p.truth is not None:
            t_lat, t_lon = p.truth[0], _short_way(p.longitude, p.truth[1])
            folium.CircleMarker(
                [t_lat, t_lon],
                radius=6,
                color=TRUTH,
                fill=True,
                fill_opacity=0.9,
                tooltip=f"true location of {html.escape(p.name)}",
            ).add_to(truth)
            folium.PolyLine(
                [[p.latitude, p.longitude], [t_lat, t_lon]],
                color=ERROR_LINE,
                weight=2,
                tooltip=f"{p.error_km:,.0f} km",
            ).add_to(errors)
    for layer in (radius, errors, truth, predicted):
        layer.add_to(fmap)
    folium.LayerControl(collapsed=True).add_to(fmap)
    if points:
        lats = [p.latitude for p in points] + [p.truth[0] for p in points if p.truth]
        lons = [p.longitude for p in points] + [_short_way(p.longitude, p.truth[1]) for p in points if p.truth]
        pad = 5.0 if len(points) == 1 and not any(p.truth for p in points) else 1.0
        fmap.fit_bounds([[min(lats) - pad, min(lons) - pad], [max(lats) + pad, max(lons) + pad]])
    return fmap


STATIC = Path(__file__).resolve().parent / "static"


def _make_offline(fmap) -> None:
    """Inline Leaflet (no CDN) and use the country outlines as the base layer (no tiles)."""
    import folium
    from branca.element import Element

    fmap.default_js, fmap.default_css = [], []  # folium's CDN scripts and styles: Leaflet is inlined instead
    leaflet = (STATIC / "leaflet.js").read_text(encoding="utf-8").replace("</script", "<\\/script")
    style = (STATIC / "leaflet.css").read_text(encoding="utf-8")
    fmap.get_root().header.add_child(Element(f"<style>{style}</style>\n<script>{leaflet}</script>"), name="leaflet")
    # folium's popups build their HTML with jQuery's $(html)[0]; jQuery is not inlined, so a two-line stand-in
    shim = (
        "window.$=window.$||function(h){var t=document.createElement('template');"
        "t.innerHTML=h.trim();return [t.content.firstChild];};"
    )
    fmap.get_root().header.add_child(Element(f"<script>{shim}</script>"), name="jquery-html")
    folium.GeoJson(
        country_outlines(),
        name="countries (geohf boundaries)",
        style_function=lambda _: {"color": "#777777", "weight": 0.6, "fillColor": "#f2efe9", "fillOpacity": 1.0},
        tooltip=folium.GeoJsonTooltip(["country"], labels=False),
        overlay=False,
        control=False,
    ).add_to(fmap)
    fmap.get_root().header.add_child(Element("<style>.leaflet-container{background:#cfe3f3}</style>"), name="sea")


@lru_cache(maxsize=1)
def country_outlines(tolerance_deg: float = 0.1) -> str:
    """GeoJSON of the countries: geohf's boundaries dissolved by country, simplified (a few MB at most)."""
    from ..geo.boundaries import load_boundaries

    regions = load_boundaries(None)
    countries = regions.dissolve("country_code", as_index=False, aggfunc={"country": "first"})
    countries["geometry"] = countries.geometry.simplify(tolerance_deg, preserve_topology=True)
    return countries[["country_code", "country", "geometry"]].to_json(drop_id=True, to_wgs84=False)


def save_map(fmap, path: str | os.PathLike) -> Path:
    """Write the map's HTML atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fmap.save(str(tmp))
    return path
