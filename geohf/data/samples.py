"""Sample raw folders in every layout, cut from Blue Marble at true coordinates.

For tests, benchmarks and trying ``geohf dataset build`` without scraping anything: each
image is a Blue Marble crop around its own coordinates, resized to a street-image size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..geo.labelling import PointLabeller
from .bluemarble import latlon_to_pixel, load_blue_marble


def land_points(n: int, labeller: PointLabeller, seed: int = 0, exclude=("AQ",)) -> pd.DataFrame:
    """``n`` random land points (uniform on the sphere) with their labels."""
    rng = np.random.default_rng(seed)
    out = []
    while sum(len(f) for f in out) < n:
        lat = np.rad2deg(np.arcsin(rng.uniform(-1, 1, 4 * n)))
        lon = rng.uniform(-180, 180, 4 * n)
        labels, _ = labeller.label(lat, lon)
        ok = (labels["match"] == "inside").to_numpy() & ~labels["country_code"].isin(exclude).to_numpy()
        out.append(
            pd.concat(
                [pd.DataFrame({"latitude": lat[ok], "longitude": lon[ok]}), labels[ok].reset_index(drop=True)], axis=1
            )
        )
    return pd.concat(out, ignore_index=True).head(n)


def crop_around(lat: float, lon: float, size: tuple[int, int] = (320, 180), span_px: int | None = None) -> Image.Image:
    """A Blue Marble crop centred on (lat, lon), ``2·span_px`` wide (default: native resolution),
    resized to ``size`` (width, height)."""
    image = load_blue_marble()
    h, w = image.shape[:2]
    x, y = latlon_to_pixel(lat, lon, w, h)
    span_px = span_px or size[0] // 2
    half_w, half_h = span_px, max(span_px * size[1] // size[0], 1)
    x0 = int(np.clip(round(x) - half_w, 0, w - 2 * half_w))
    y0 = int(np.clip(round(y) - half_h, 0, h - 2 * half_h))
    crop = Image.fromarray(image[y0 : y0 + 2 * half_h, x0 : x0 + 2 * half_w])
    return crop.resize(size, Image.Resampling.BICUBIC)


def make_lost_and_found(root: str | Path, points: pd.DataFrame, size=(320, 180), with_labels: bool = True) -> Path:
    """``location_<i>.png`` + ``location_<i>.json`` pairs for each point."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(points.itertuples()):
        crop_around(row.latitude, row.longitude, size).save(root / f"location_{i}.png")
        meta = {"coordinates": [row.latitude, row.longitude]}
        if with_labels:
            meta.update(
                {
                    "country_name": row.country,
                    "country_code": row.country_code,
                    "regions": [[row.region, f"POINT ({row.longitude} {row.latitude})"]],
                }
            )
        (root / f"location_{i}.json").write_text(json.dumps(meta))
    return root


def make_grid_folders(
    root: str | Path, points: pd.DataFrame, views: int = 3, flat: bool = False, size=(160, 160)
) -> Path:
    """The grid-folders layout ``<grid>/<lat>,<lon>/<n>-<yyyy>-<mm>.jpg`` (or flattened) with ``views`` per location."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(points.itertuples()):
        grid = str(i % 7)
        for v in range(views):
            image = crop_around(row.latitude, row.longitude, size, span_px=size[0] // 2 - 16 * v)
            name = f"{v}-20{10 + i % 10}-{1 + i % 12:02d}.jpg"
            loc = f"{row.latitude:.6f},{row.longitude:.6f}"
            path = root / f"{grid}+{loc}+{name}" if flat else root / grid / loc / name
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path, quality=92)
    return root


def make_imagefolder(root: str | Path, points: pd.DataFrame, size=(200, 150), fmt: str = "csv") -> Path:
    """Images + ``metadata.<fmt>`` (csv or jsonl) with ``file_name, latitude, longitude, location_id``."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, row in enumerate(points.itertuples()):
        name = f"images/img_{i:05d}.jpg"
        crop_around(row.latitude, row.longitude, size).save(root / name, quality=92)
        rows.append(
            {
                "file_name": name,
                "latitude": row.latitude,
                "longitude": row.longitude,
                "location_id": f"loc{i}",
                "heading": float(90 * (i % 4)),
            }
        )
    table = pd.DataFrame(rows)
    if fmt == "csv":
        table.to_csv(root / "metadata.csv", index=False)
    else:
        table.to_json(root / "metadata.jsonl", orient="records", lines=True)
    return root
