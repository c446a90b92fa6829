"""``geohf dataset import`` speed on format-identical fixtures.

    python benchmarks/imports.py [--images 2000] [--output runs/bench/imports]

Writes an im2gps3k-format folder (``im2gps3k_places365.csv`` + ``images/``) and an OSV-5M-format
folder (``test.csv`` + ``images/test/NN.zip``) of ``--images`` random-pixel 320×240 JPEGs at random
land points, imports each (``import_source``) and prints images/s end to end (labelling, Parquet,
card and map included) and what the build report measured.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from geohf.data.samples import land_points
from geohf.data.sources import ImportConfig, import_source
from geohf.geo.labelling import PointLabeller

SHARDS = 5
DISTINCT_IMAGES = 50


def jpegs(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray((rng.random((240, 320, 3)) * 255).astype(np.uint8)).save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def make_fixtures(root: Path, n: int) -> None:
    points = land_points(n, PointLabeller(), seed=1)
    blobs = jpegs(DISTINCT_IMAGES)
    bench = root / "im2gps3k"
    (bench / "images").mkdir(parents=True, exist_ok=True)
    with open(bench / "im2gps3k_places365.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["IMG_ID", "AUTHOR", "LAT", "LON", "S3_Label", "S16_Label", "S365_Label", "Prob_indoor",
                    "Prob_natural", "Prob_urban"])  # fmt: skip
        for k, p in enumerate(points.itertuples()):
            name = f"{k}_x_{k}@N00.jpg"
            w.writerow([name, f"{k}@N00", p.latitude, p.longitude, 1, 2, 3, 0.1, 0.2, 0.7])
            (bench / "images" / name).write_bytes(blobs[k % DISTINCT_IMAGES])
    osv = root / "osv5m"
    (osv / "images" / "test").mkdir(parents=True, exist_ok=True)
    with open(osv / "test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "latitude", "longitude", "country", "region", "sub-region", "city", "unique_country",
                    "unique_region", "unique_sub-region", "unique_city"])  # fmt: skip
        for k, p in enumerate(points.itertuples()):
            w.writerow([10**15 + k, p.latitude, p.longitude, p.country_code, p.region, "", "c", p.country_code,
                        f"{p.region}_{p.country_code}", "", "c"])  # fmt: skip
    shards = [zipfile.ZipFile(osv / "images" / "test" / f"{i:02d}.zip", "w") for i in range(SHARDS)]
    for k in range(n):
        shards[k % SHARDS].writestr(f"{10**15 + k}.jpg", blobs[k % DISTINCT_IMAGES])
    for shard in shards:
        shard.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--output", default="runs/bench/imports")
    args = parser.parse_args()
    root = Path(args.output)
    make_fixtures(root / "raw", args.images)
    results = {}
    for source in ("im2gps3k", "osv5m"):
        start = time.perf_counter()
        result = import_source(ImportConfig(source, str(root / "raw" / source), str(root / source), overwrite=True))
        seconds = time.perf_counter() - start
        n = sum(result.report.splits.values())
        results[source] = {"images": n, "seconds": round(seconds, 2), "images_per_second": round(n / seconds, 1)}
        print(f"{source}: {n} images in {seconds:.1f} s = {n / seconds:,.0f} images/s end to end")
    (root / "imports.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
