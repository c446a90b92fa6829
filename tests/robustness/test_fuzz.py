"""Property-based fuzzing of the raw metadata readers: JSON, CSV and EXIF values, and the coordinate checks.

Thousands of generated inputs; none may raise. Every rejection is counted with its reason (the table row
lists them). ``max_examples`` keeps each test to a few seconds.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geohf.data.filters import _as_float, validate_coordinates
from geohf.data.layouts import _coordinates, read_lost_and_found
from geohf.data.skips import SkipLog
from geohf.inference.exif import read_gps
from geohf.inference.inputs import group_by_csv

FAST = settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

numbers = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-400, max_value=400),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12), numbers.map(str))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
keys = st.sampled_from(["coordinates", "geometry", "type", "lat", "lng", "regions", "country_code", "x"])
metas = st.dictionaries(keys, st.one_of(json_values, st.just("Point")), max_size=5)
# what the dataset's files look like, each field replaced by anything
laf_metas = st.fixed_dictionaries(
    {"coordinates": st.one_of(st.tuples(numbers, numbers).map(list), json_values)},
    optional={"regions": st.one_of(json_values, st.lists(st.lists(json_values, max_size=2), max_size=2)),
              "country_code": json_values, "country_name": json_values, "geometry": metas},
)  # fmt: skip


def _reason(text: str) -> str:
    """A skip reason without the value it quotes (for counting)."""
    return re.sub(r"(got|:) .*$", r"\1 …", text)


def test_fuzz_json_coordinates_and_numbers(record):
    seen = Counter()

    @FAST
    @given(metas)
    def check(meta):
        coords = _coordinates(meta)
        if coords is None:
            seen["no coordinates"] += 1
            return
        values = [_as_float(v) for v in coords]
        for v in values:
            assert v is None or isinstance(v, float)
        seen["numbers" if None not in values else "not a number"] += 1

    check()
    total = sum(seen.values())
    record("fuzz", f"{total:,} generated lost-and-found JSON objects (nested values, 400-digit integers, NaN, "
           "inf, strings)", "layouts._coordinates + filters._as_float", "no exception; None for what is not "
           "a number", ", ".join(f"{k}: {v:,}" for k, v in seen.most_common()), True, fixed=True)  # fmt: skip


def test_fuzz_validate_coordinates(labeller, record):
    reasons = Counter()
    kept = [0]

    plausible = st.floats(min_value=-100, max_value=370)

    @SLOW
    @given(st.lists(st.tuples(json_values | plausible, json_values | plausible), min_size=1, max_size=6))
    def check(pairs):
        frame = pd.DataFrame(
            {
                "source_file": [f"img{i}.jpg" for i in range(len(pairs))],
                "latitude": pd.Series([p[0] for p in pairs], dtype=object),
                "longitude": pd.Series([p[1] for p in pairs], dtype=object),
            }
        )
        log = SkipLog()
        out = validate_coordinates(frame, labeller, log)
        assert len(out) + len(log) == len(frame)  # every row kept or skipped with a reason
        assert out["latitude"].between(-90, 90).all() and out["longitude"].between(-180, 180).all()
        kept[0] += len(out)
        for e in log.entries:
            reasons[_reason(e.reason)] += 1

    check()
    total = kept[0] + sum(reasons.values())
    record("fuzz", f"{total:,} generated coordinate pairs (any JSON / CSV value)", "filters.validate_coordinates",
           "no exception; each row kept or skipped with its reason", f"kept {kept[0]:,}; "
           + "; ".join(f"{k}: {v:,}" for k, v in reasons.most_common(6)), True, fixed=True)  # fmt: skip


def test_fuzz_lost_and_found_json_files(tmp_path_factory, record):
    """Whole JSON files beside an image, through the layout reader (regions, country fields included)."""
    from PIL import Image

    reasons = Counter()
    rows = [0]
    png = tmp_path_factory.mktemp("fuzz_png") / "x.png"
    Image.new("RGB", (4, 4)).save(png)

    @SLOW
    @given(st.one_of(laf_metas, laf_metas, json_values, metas, st.text(max_size=30)))
    def check(meta):
        root = tmp_path_factory.mktemp("laf")
        (root / "location_1.png").write_bytes(png.read_bytes())
        text = meta if isinstance(meta, str) else json.dumps(meta)
        (root / "location_1.json").write_text(text, encoding="utf-8")
        log = SkipLog()
        frame = read_lost_and_found(root, log)
        assert len(frame) + len(log) >= 1
        rows[0] += len(frame)
        for e in log.entries:
            reasons[_reason(e.reason)] += 1

    check()
    record("fuzz", f"{rows[0] + sum(reasons.values()):,} generated JSON files beside an image", "read_lost_and_found",
           "no exception; a row, or a skip with its reason", f"rows {rows[0]:,}; "
           + "; ".join(f"{k}: {v:,}" for k, v in reasons.most_common(4)), True, fixed=True)  # fmt: skip


def _exif_value():
    from PIL.TiffImagePlugin import IFDRational

    rational = st.builds(IFDRational, st.integers(-(10**9), 10**9), st.integers(-5, 10**6))
    part = st.one_of(rational, st.integers(-(10**6), 10**6), st.floats(allow_nan=True), st.text(max_size=4))
    return st.one_of(st.tuples(part, part, part), st.lists(part, max_size=4).map(tuple), part, st.binary(max_size=8))


def test_fuzz_exif_gps(record):
    from PIL import ExifTags, Image

    seen = Counter()

    @FAST
    @given(_exif_value(), _exif_value(), st.one_of(st.text(max_size=3), st.binary(max_size=3), st.none()))
    def check(lat, lon, ref):
        exif = Image.Exif()
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
        gps[ExifTags.GPS.GPSLatitude], gps[ExifTags.GPS.GPSLongitude] = lat, lon
        if ref is not None:
            gps[ExifTags.GPS.GPSLatitudeRef] = gps[ExifTags.GPS.GPSLongitudeRef] = ref
        fix = read_gps(exif)
        if fix is None:
            seen["no usable GPS"] += 1
        else:
            assert math.isfinite(fix.latitude) and -90 <= fix.latitude <= 90 and -180 <= fix.longitude <= 180
            seen["a fix in range"] += 1

    check()
    record("fuzz", f"{sum(seen.values()):,} generated EXIF GPS values (rationals with zero or negative "
           "denominators, NaN, text, bytes, wrong lengths)", "exif.read_gps", "no exception; None when unusable",
           ", ".join(f"{k}: {v:,}" for k, v in seen.most_common()), True)  # fmt: skip


def test_fuzz_group_csv(tmp_path_factory, record):
    seen = Counter()
    cell = st.one_of(st.text(max_size=10), numbers.map(str), st.just(""), st.just("nan"), st.just("1e999"))

    @SLOW
    @given(
        st.lists(st.sampled_from(["file", "location_id", "latitude", "longitude", "x"]), min_size=0, max_size=5),
        st.lists(st.lists(cell, max_size=6), max_size=6),
    )
    def check(header, body):
        import csv

        path = tmp_path_factory.mktemp("csv") / "views.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(body)
        try:
            inputs = group_by_csv(path)
        except ValueError as err:
            assert "needs columns 'file' and 'location_id'" in str(err) or "line contains NUL" in str(err)
            seen["refused: missing columns"] += 1
            return
        for item in inputs.items:
            assert item.truth is None or all(isinstance(v, float) for v in item.truth)
        seen["rows grouped"] += sum(len(i.images) for i in inputs.items)
        seen["rows refused: empty file or location_id"] += len(inputs.errors)

    check()
    record("fuzz", f"{SLOW.max_examples} generated view CSVs (any header, any cells)", "inputs.group_by_csv",
           "no exception but one clear ValueError for missing columns", ", ".join(f"{k}: {v:,}" for k, v in
           seen.most_common()), True)  # fmt: skip
