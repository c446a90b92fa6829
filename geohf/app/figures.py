"""Static world maps for the app (matplotlib, offline): predictions, likelihood grids, guesses, a clickable map."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.bluemarble import pixel_to_latlon
from ..files import atomic_path
from ..geo.sphere import destination_points, wrap_longitude
from ..inference.predictions import CellTable
from ..plots import world_axes

if TYPE_CHECKING:
    from ..inference.maps import LikelihoodGrid

COLOURS = {"truth": "#31a354", "model": "#e6550d", "player": "#3182bd", "cells": "#cb181d"}


def circle_latlon(lat: float, lon: float, radius_km: float, n: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """Points of the great circle ``radius_km`` around a point (for drawing confidence radii)."""
    clat, clon = destination_points(lat, lon, radius_km, np.linspace(0, 2 * np.pi, n))
    return clat, wrap_longitude(clon)


def _draw_radius(ax, lat, lon, radius_km, colour):
    clat, clon = circle_latlon(lat, lon, radius_km)
    breaks = np.flatnonzero(np.abs(np.diff(clon)) > 180) + 1  # split where the circle crosses the antimeridian
    for part_lat, part_lon in zip(np.split(clat, breaks), np.split(clon, breaks)):
        ax.plot(part_lon, part_lat, color=colour, linewidth=1, alpha=0.8)


def _draw_likelihood(fig, ax, grid: LikelihoodGrid, min_share: float = 1e-3) -> None:
    """Each grid point's cell shaded by its log-density (those above ``min_share`` of the highest density, as
    ``geohf predict --map`` draws them), with a colour bar."""
    half = grid.resolution_deg / 2
    lat_edges = np.clip(np.append(grid.latitudes - half, grid.latitudes[-1] + half), -90.0, 90.0)
    lon_edges = np.append(grid.longitudes - half, grid.longitudes[-1] + half)  # the axes clip the ±180° halves
    top = float(np.nanmax(grid.log_density))
    shown = np.ma.masked_where(~(grid.log_density >= top + np.log(min_share)), grid.log_density)
    mesh = ax.pcolormesh(lon_edges, lat_edges, shown, cmap="Reds", alpha=0.6, shading="flat", linewidth=0)
    fig.colorbar(mesh, ax=ax, shrink=0.75, pad=0.02, label="log-density per sr")


def place_figure(
    cells: CellTable,
    probs: np.ndarray,
    record: dict,
    guesses: dict | None = None,
    likelihood: LikelihoodGrid | None = None,
):
    """Cell probabilities (circles sized by probability) or a flow head's ``likelihood`` grid (shaded), the
    predicted point and its radius, and ``guesses``: ``{"truth": (lat, lon), "player": (lat, lon)}`` where known,
    joined to the model's point."""
    fig, ax = world_axes(figsize=(9, 4.7))
    if likelihood is not None:
        _draw_likelihood(fig, ax, likelihood)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.size and probs.max() > 0:  # a regression-only model has no cells
        ok = np.isfinite(cells.latitude) & (probs >= 1e-3 * probs.max())
        ax.scatter(
            cells.longitude[ok],
            cells.latitude[ok],
            s=600 * probs[ok] / probs.max(),
            color=COLOURS["cells"],
            alpha=0.35,
            linewidths=0,
            label="cell probability",
        )
    lat, lon = record.get("pred_latitude"), record.get("pred_longitude")
    if lat is not None:
        if record.get("radius_km"):
            _draw_radius(ax, lat, lon, record["radius_km"], COLOURS["model"])
        ax.scatter([lon], [lat], marker="*", s=220, color=COLOURS["model"], edgecolor="k", label="model", zorder=5)
    for who, point in (guesses or {}).items():
        if point is None or point[0] is None:
            continue
        ax.scatter([point[1]], [point[0]], s=90, color=COLOURS[who], edgecolor="k", label=who, zorder=6)
        if lat is not None:
            ax.plot([lon, point[1]], [lat, point[0]], color=COLOURS[who], linewidth=1, linestyle="--")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    import matplotlib.pyplot as plt

    plt.close(fig)  # out of pyplot's registry (the figure still draws): a served app would keep every one
    return fig


def clickable_world_map(path: str | os.PathLike, width_px: int = 1000) -> Path:
    """An equirectangular world map filling the whole image (x: longitude, y: latitude), for clicks."""
    path = Path(path)
    if path.is_file():
        return path
    fig, ax = world_axes(figsize=(width_px / 100, width_px / 200))
    ax.set_position([0, 0, 1, 1])
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("")
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path


def click_to_latlon(x: float, y: float, width: int, height: int) -> tuple[float, float]:
    """Latitude and longitude of a click on :func:`clickable_world_map`."""
    lat, lon = pixel_to_latlon(x, y, width, height)
    return round(float(lat), 4), round(float(lon), 4)
