"""Protocol-exact benchmark tables: im2gps3k, YFCC4k, OSV-5M, beside the papers' published rows.

The numbers the papers report, computed the way they compute them:

* accuracy within 1 / 25 / 200 / 750 / 2500 km (street, city, region, country, continent),
  median and mean great-circle km, and GeoScore = mean 5000·exp(−d / 1492.7) (OSV-5M, PIGEON);
* country / region / sub-region / city accuracy **the OSV-5M way** (``metrics/utils.py`` of
  gastruc/osv5m): the prediction is reverse-geocoded to the nearest GeoNames city with
  ``reverse_geocoder`` and compared with the sample's ``unique_country`` (``cc``), ``unique_region``
  (``admin1_cc``), ``unique_sub-region`` (``admin2_admin1_cc``) and ``unique_city``
  (``name_admin2_admin1_cc``); samples whose label is missing (``nan``) are left out of that level.
  A set without those labels (im2gps3k, YFCC4k) takes them from its true coordinates by the same
  reverse geocoding;
* country / region accuracy **geohf's way**: the prediction's boundary polygon (point-in-polygon
  labelling) against the sample's polygon labels; samples at sea (no label) are left out.

Rows with a country but no coordinates (country-only labels) count in the country accuracies
only, and the number of such rows is reported. Every figure is printed with its denominator.

Where the peers' own evaluation code differs, its convention is named and selectable (``--convention``,
:data:`CONVENTIONS`): the distance (a sphere's haversine, and which radius, or the WGS84 geodesic) and whether
"within t km" is ``d <= t`` or ``d < t``. The published rows name the convention of the code that produced them
where it is known.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from ..geo.sphere import EARTH_RADIUS_KM, geodesic_km, haversine_km
from ..inference.predictions import PredictionsBuffer
from .metrics import DISTANCE_THRESHOLDS_KM, GEOSCORE_SCALE_KM
from .names import BENCHMARKS

# images each benchmark lists (what the papers' tables are computed on)
LISTED_IMAGES = {"im2gps3k": 2997, "yfcc4k": 4536, "osv5m": 210122}
OSV5M_LEVELS = ("country", "region", "sub-region", "city")
MISSING = {"", "nan", "NaN", "None"}


@dataclass(frozen=True)
class Convention:
    """How a peer's evaluation code measures distances: ``haversine`` on a sphere of ``radius_km``, or the WGS84
    ``geodesic``; ``strict``: "within t km" is ``d < t`` (else ``d <= t``); ``source``: the code it follows."""

    name: str
    distance: str
    radius_km: float | None
    strict: bool
    source: str

    def distances(self, lat1, lon1, lat2, lon2) -> np.ndarray:
        if self.distance == "geodesic":
            return geodesic_km(lat1, lon1, lat2, lon2)
        return haversine_km(lat1, lon1, lat2, lon2) * (self.radius_km / EARTH_RADIUS_KM)

    def within(self, d: np.ndarray, t: float) -> np.ndarray:
        return d < t if self.strict else d <= t

    def describe(self) -> str:
        how = f"haversine on a {self.radius_km:,} km sphere" if self.distance == "haversine" else "WGS84 geodesic"
        return f"{self.name}: {how}, within t km = d {'<' if self.strict else '<='} t ({self.source})"


CONVENTIONS = {
    "geohf": Convention("geohf", "haversine", EARTH_RADIUS_KM, False, "geohf: the IUGG mean Earth radius"),
    "osv5m": Convention(
        "osv5m", "haversine", 6371.0, True,
        "OSV-5M and PLONK: metrics/utils.py haversine with R = 6371, metrics/distance_based.py counts d < t",
    ),
    "geoclip": Convention(
        "geoclip", "geodesic", None, False, "GeoCLIP: geoclip/train/eval.py, geopy's geodesic (WGS84), gd <= dis"
    ),
}  # fmt: skip


def columns(convention: Convention) -> list[tuple[str, str]]:
    """The table's columns (metric key, header); the thresholds read ``<`` under a strict convention."""
    sign = "<" if convention.strict else "≤"
    within = [(f"within_{t}km", f"{sign}{t:,} km %") for t in DISTANCE_THRESHOLDS_KM]
    return within + COLUMNS[len(within) :]


COLUMNS = [
    *[(f"within_{t}km", f"≤{t:,} km %") for t in DISTANCE_THRESHOLDS_KM],
    ("median_km", "median km"),
    ("mean_km", "mean km"),
    ("geoscore", "GeoScore"),
    *[(f"osv5m_{level}_accuracy", f"{level} % (OSV-5M)") for level in OSV5M_LEVELS],
    ("polygon_country_accuracy", "country % (polygons)"),
    ("polygon_region_accuracy", "region % (polygons)"),
]


def reverse_geocode(lat, lon) -> pd.DataFrame:
    """The nearest GeoNames city (``reverse_geocoder``'s table) of each point: ``cc, admin1, admin2, name``."""
    import reverse_geocoder  # the 'benchmarks' extra

    points = list(zip(np.asarray(lat, dtype=np.float64).tolist(), np.asarray(lon, dtype=np.float64).tolist()))
    if not points:
        return pd.DataFrame(columns=["cc", "admin1", "admin2", "name"])
    found = _geocoder(reverse_geocoder).query(points)
    return pd.DataFrame([{k: r.get(k, "") for k in ("cc", "admin1", "admin2", "name")} for r in found])


@lru_cache(maxsize=1)
def _geocoder(module):
    return module.RGeocoder(mode=1, verbose=False)  # single process: the same answers as search()


def osv5m_labels(places: pd.DataFrame) -> dict[str, np.ndarray]:
    """Reverse-geocoded places as OSV-5M's ``unique_*`` strings (``metrics/utils.py``: ``reverse``)."""
    cc, a1, a2, name = (places[c].astype(str).to_numpy(dtype=object) for c in ("cc", "admin1", "admin2", "name"))
    return {
        "country": cc,
        "region": a1 + "_" + cc,
        "sub-region": a2 + "_" + a1 + "_" + cc,
        "city": name + "_" + a2 + "_" + a1 + "_" + cc,
    }


def _known(values) -> np.ndarray:
    return np.array([isinstance(v, str) and v not in MISSING for v in values], bool)


def _accuracy(pred, true, out: dict, key: str) -> None:
    """``out[key]``: % of ``pred == true`` over the rows whose ``true`` is known; ``out["n_" + key]``: how many."""
    true = np.asarray(true, dtype=object)
    keep = _known(true)
    out[f"n_{key}"] = int(keep.sum())
    out[key] = float(100.0 * (np.asarray(pred, dtype=object)[keep] == true[keep]).mean()) if keep.any() else None


def benchmark_metrics(
    truth: pd.DataFrame, pred_lat, pred_lon, labeller=None, convention: str | Convention = "geohf"
) -> dict[str, float | None]:
    """The papers' metrics for predictions against ``truth`` (one row per image), distances by ``convention``
    (:data:`CONVENTIONS`); each figure's denominator as ``n_<key>`` (``n_distances``: the located rows).

    ``truth``: ``latitude, longitude`` (NaN for country-only rows), and where the set has them
    ``country_code, region_code`` (polygon labels) and ``unique_country, unique_region,
    unique_sub-region, unique_city`` (OSV-5M's labels).
    """
    convention = CONVENTIONS[convention] if isinstance(convention, str) else convention
    pred_lat, pred_lon = np.asarray(pred_lat, dtype=np.float64), np.asarray(pred_lon, dtype=np.float64)
    lat, lon = truth["latitude"].to_numpy(np.float64), truth["longitude"].to_numpy(np.float64)
    located = np.isfinite(lat) & np.isfinite(lon)
    d = convention.distances(lat[located], lon[located], pred_lat[located], pred_lon[located])
    out: dict[str, float | None] = {"n_distances": int(d.size)}
    for t in DISTANCE_THRESHOLDS_KM:
        out[f"within_{t}km"] = float(100.0 * convention.within(d, t).mean()) if d.size else None
    out["median_km"] = float(np.median(d)) if d.size else None
    out["mean_km"] = float(d.mean()) if d.size else None
    out["geoscore"] = float((5000.0 * np.exp(-d / GEOSCORE_SCALE_KM)).mean()) if d.size else None
    predicted = osv5m_labels(reverse_geocode(pred_lat, pred_lon))
    if all(f"unique_{level}" in truth for level in OSV5M_LEVELS):
        given = {level: truth[f"unique_{level}"].to_numpy(dtype=object) for level in OSV5M_LEVELS}
    else:  # the same reverse geocoding of the true coordinates (country-only rows: their country)
        given = {k: np.full(len(truth), None, dtype=object) for k in OSV5M_LEVELS}
        if located.any():
            true_places = osv5m_labels(reverse_geocode(lat[located], lon[located]))
            for level in OSV5M_LEVELS:
                given[level][located] = true_places[level]
        if "country_code" in truth:
            given["country"][~located] = truth["country_code"].to_numpy(dtype=object)[~located]
    for level in OSV5M_LEVELS:
        _accuracy(predicted[level], given[level], out, f"osv5m_{level}_accuracy")
    if labeller is not None and "country_code" in truth:
        labels, _ = labeller.label(pred_lat, pred_lon)
        _accuracy(labels["country_code"].to_numpy(dtype=object), truth["country_code"].to_numpy(dtype=object), out,
                  "polygon_country_accuracy")  # fmt: skip
        if "region_code" in truth:
            region = truth["region_code"].to_numpy(dtype=object).copy()
            region[~located] = None  # country-only rows have no region
            _accuracy(labels["region_code"].to_numpy(dtype=object), region, out, "polygon_region_accuracy")
    return out


@dataclass
class PublishedRow:
    method: str
    benchmark: str
    paper: str
    table: str
    checked: str
    metrics: dict[str, float]
    convention: str | None = None  # the CONVENTIONS entry of the code that produced the numbers, where known


def published_rows(benchmark: str) -> list[PublishedRow]:
    """The published results for ``benchmark`` shipped in ``geohf/evaluation/data/published.json``."""
    data = json.loads(resources.files("geohf.evaluation").joinpath("data/published.json").read_text("utf-8"))
    return [PublishedRow(**r) for r in data["results"] if r["benchmark"] == benchmark]


@dataclass
class BenchmarkResult:
    """One model on one benchmark, with the published rows beside it."""

    benchmark: str
    model: str
    evaluated: int
    listed: int | None
    missing: int | None
    country_only: int
    metrics: dict[str, float | None]
    published: list[PublishedRow] = field(default_factory=list)
    source_rows: int | None = None
    convention: str = "geohf"

    def table(self) -> str:
        """A plain-text table: the model's row, then each published row (``-``: not reported); then the
        convention, each column's denominator and the citations."""
        cols = columns(CONVENTIONS[self.convention])
        rows = [(self.model, self.metrics)] + [(p.method, p.metrics) for p in self.published]
        head = ["method", *[label for _, label in cols]]
        keep = [i for i, (key, _) in enumerate(cols) if any(m.get(key) is not None for _, m in rows)]
        head = [head[0], *[head[i + 1] for i in keep]]
        lines = [head] + [[name, *[_fmt(m.get(cols[i][0])) for i in keep]] for name, m in rows]
        widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
        text = [
            " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in lines
        ]
        text.insert(1, "-+-".join("-" * w for w in widths))
        return "\n".join([self.summary(), *text, *self.footer(), *self.citations()])

    def footer(self) -> list[str]:
        """The convention the model's row was scored by, and over how many images each of its figures is."""
        m = self.metrics
        counts = [("distances and GeoScore", m.get("n_distances"))]
        counts += [(f"{level} (OSV-5M)", m.get(f"n_osv5m_{level}_accuracy")) for level in OSV5M_LEVELS]
        counts += [(f"{level} (polygons)", m.get(f"n_polygon_{level}_accuracy")) for level in ("country", "region")]
        shown = "; ".join(f"{name} over {n:,}" for name, n in counts if n is not None)
        lines = [f"convention {CONVENTIONS[self.convention].describe()}"]
        return lines + [f"denominators: {shown} images"] if shown else lines

    def summary(self) -> str:
        listed = f" of {self.listed:,} listed" if self.listed else ""
        missing = f" ({self.missing:,} missing: see the dataset's skipped.csv)" if self.missing else ""
        only = f"; {self.country_only} country-only rows scored on country only" if self.country_only else ""
        return f"{self.benchmark}: {self.evaluated:,} images evaluated{listed}{missing}{only}"

    def citations(self) -> list[str]:
        def their(p: PublishedRow) -> str:
            return f" (scored by their code: convention {p.convention})" if p.convention else " (convention unknown)"

        return [f"  {p.method}: {p.paper}, {p.table}{their(p)}" for p in self.published]

    def to_dict(self) -> dict:
        return {**asdict(self), "published": [asdict(p) for p in self.published]}


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}"


TRUTH_COLUMNS = ("latitude", "longitude", "country_code", "region_code", *[f"unique_{lv}" for lv in OSV5M_LEVELS])


def source_rows(dataset_dir: str | Path | None) -> int | None:
    """Rows the source listed, from an imported dataset folder's ``build_report.json`` (else ``None``)."""
    if dataset_dir is None or not (Path(dataset_dir) / "build_report.json").is_file():
        return None
    report = json.loads((Path(dataset_dir) / "build_report.json").read_text())
    return report.get("processing", {}).get("rows in the source")


def evaluate_benchmark(
    model,
    split,
    benchmark: str,
    batch_size: int = 64,
    labeller=None,
    bf16: bool | None = None,
    model_name: str = "model",
    dataset_dir: str | Path | None = None,
    convention: str = "geohf",
) -> tuple[BenchmarkResult, pd.DataFrame]:
    """Score ``model`` on one split of an imported benchmark (``geohf dataset import``) by the papers' protocol,
    distances by ``convention`` (:data:`CONVENTIONS`).

    Returns the result and the per-image frame (truth, prediction, error km by the convention).
    """
    from .evaluation import as_predictor

    if benchmark not in BENCHMARKS:
        raise UserError(f"--benchmark {benchmark}: choose one of {', '.join(BENCHMARKS)}")
    if convention not in CONVENTIONS:
        raise UserError(f"--convention {convention}: choose one of {', '.join(CONVENTIONS)}")
    missing = [c for c in ("latitude", "longitude", "image") if c not in split.column_names]
    if missing:
        raise UserError(
            f"the dataset split has no {missing} column(s): import it with geohf dataset import {benchmark}"
        )
    if labeller is None:
        from ..geo.labelling import PointLabeller

        labeller = PointLabeller()
    predictor = as_predictor(model, bf16)
    truth = split.select_columns([c for c in TRUTH_COLUMNS if c in split.column_names]).to_pandas()
    kept = PredictionsBuffer(predictor.prediction_count(split))  # streamed: a few values per row, allocated once
    for batch in predictor.iter_dataset(split, batch_size=batch_size, desc=f"evaluating {benchmark}"):
        kept.add(batch)
    predictions = kept.result()
    pred_latitude, pred_longitude = predictions.pred_latitude, predictions.pred_longitude
    metrics = benchmark_metrics(truth, pred_latitude, pred_longitude, labeller, convention)
    listed = source_rows(dataset_dir) or LISTED_IMAGES.get(benchmark)
    located = truth["latitude"].notna() & truth["longitude"].notna()
    result = BenchmarkResult(
        benchmark=benchmark,
        model=model_name,
        evaluated=len(truth),
        listed=listed,
        missing=max(listed - len(truth), 0) if listed else None,
        country_only=int((~located).sum()),
        metrics=metrics,
        published=published_rows(benchmark),
        source_rows=source_rows(dataset_dir),
        convention=convention,
    )
    frame = truth.copy()
    frame["pred_latitude"], frame["pred_longitude"] = pred_latitude, pred_longitude
    frame["error_km"] = CONVENTIONS[convention].distances(truth["latitude"], truth["longitude"],
                                                          frame["pred_latitude"], frame["pred_longitude"])  # fmt: skip
    return result, frame
