"""Pictures: world maps of samples and errors, error curves (matplotlib, headless)."""

from __future__ import annotations

import os
from functools import lru_cache

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


@lru_cache(maxsize=1)
def _country_paths() -> list:
    """The low-resolution country polygons as matplotlib paths, one compound path per polygon with its
    holes (exterior counter-clockwise, holes clockwise, so the nonzero fill leaves the holes open)."""
    from matplotlib.path import Path
    from shapely.geometry.polygon import orient

    from .geo.boundaries import load_boundaries

    paths = []
    for geom in load_boundaries("lowres").geometry:
        for polygon in getattr(geom, "geoms", [geom]):
            polygon = orient(polygon, sign=1.0)
            rings = [polygon.exterior, *polygon.interiors]
            paths.append(Path.make_compound_path(*(Path(np.asarray(r.coords)[:, :2], closed=True) for r in rings)))
    return paths


def world_axes(figsize=(10, 5.2)):
    """A figure with an equirectangular world map drawn as background.

    The countries are one matplotlib ``PathCollection`` of cached paths, not ``GeoDataFrame.plot``:
    geopandas defines a new collection class per call and registers it with matplotlib's legend for
    good, so a served app that draws a map per request grew by that much every time."""
    from matplotlib.collections import PathCollection

    fig, ax = plt.subplots(figsize=figsize)
    countries = PathCollection(_country_paths(), facecolors="#e8e8e8", edgecolors="#9a9a9a", linewidths=0.3)
    ax.add_collection(countries)
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_aspect("equal")
    ax.set_xticks(range(-180, 181, 60))
    ax.set_yticks(range(-90, 91, 30))
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.grid(color="#cccccc", linewidth=0.3)
    return fig, ax


def save(fig, path: str | os.PathLike) -> str:
    """Save atomically (a temporary file beside ``path``, then a rename): a killed run leaves no half picture."""
    from pathlib import Path

    from .files import atomic_path

    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".").lower() or "png")
    finally:
        plt.close(fig)
    return str(path)


def plot_locations(lat, lon, groups, path: str | os.PathLike, title: str = "", counts: dict | None = None) -> str:
    """Sample locations on a world map, one colour per group (e.g. split); ``counts``: the legend's count per
    group when the points drawn are a sample of them."""
    fig, ax = world_axes()
    groups = np.asarray(groups)
    for g in dict.fromkeys(groups.tolist()):
        sel = groups == g
        n = (counts or {}).get(g, int(sel.sum()))
        ax.scatter(np.asarray(lon)[sel], np.asarray(lat)[sel], s=3, alpha=0.7, label=f"{g} ({n})")
    ax.legend(loc="lower left", fontsize=8, markerscale=3)
    ax.set_title(title)
    return save(fig, path)


def plot_errors(lat, lon, error_km, path: str | os.PathLike, title: str = "") -> str:
    """Test points coloured by great-circle error (log colour scale)."""
    fig, ax = world_axes()
    err = np.maximum(np.asarray(error_km, dtype=float), 1.0)
    sc = ax.scatter(lon, lat, c=err, s=6, cmap="viridis_r", norm=matplotlib.colors.LogNorm(1, 20000))
    fig.colorbar(sc, ax=ax, label="error (km)", shrink=0.8)
    ax.set_title(title)
    return save(fig, path)


def plot_error_curve(errors: dict[str, np.ndarray], path: str | os.PathLike, title: str = "") -> str:
    """Cumulative share of predictions within x km (log x), one line per method."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    x = np.logspace(0, np.log10(20040), 400)
    for name, err in errors.items():
        err = np.sort(np.asarray(err, dtype=float))
        ax.plot(x, 100 * np.searchsorted(err, x, side="right") / max(err.size, 1), label=name)
    for t in (25, 200, 750, 2500):
        ax.axvline(t, color="#bbbbbb", linewidth=0.6, linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("great-circle error (km)")
    ax.set_ylabel("% of images within")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return save(fig, path)


def plot_country_accuracy(table, path: str | os.PathLike, top: int = 25, title: str = "") -> str:
    """Horizontal bars of accuracy per country (the ``top`` countries by test support)."""
    table = table.sort_values("support", ascending=False).head(top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(6.5, 0.25 * len(table) + 1.2))
    ax.barh([f"{c} ({n})" for c, n in zip(table.index, table["support"])], table["accuracy"], color="#4c72b0")
    ax.set_xlabel("country accuracy (%)")
    ax.set_xlim(0, 100)
    ax.set_title(title)
    return save(fig, path)


def plot_confusion(matrix, labels, path: str | os.PathLike, title: str = "") -> str:
    """Row-normalised confusion matrix (true rows, predicted columns)."""
    m = np.asarray(matrix, dtype=float)
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    size = 0.28 * len(labels) + 2
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted country")
    ax.set_ylabel("true country")
    fig.colorbar(im, ax=ax, shrink=0.7)
    ax.set_title(title)
    return save(fig, path)
