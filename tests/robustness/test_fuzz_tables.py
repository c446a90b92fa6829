"""Fuzzing the metadata readers (CSV / JSONL tables, per-image JSON files, views CSVs) with hypothesis.

Generated files mix any header and cells (quotes, newlines, NUL, fields over the row limit), wrong types
and odd encodings (UTF-16, Latin-1, a UTF-8 BOM). Property: a table, one :class:`~geohf.errors.UserError`
(a ``ValueError``) naming the file, or rows listed in ``skipped.csv``; never another exception, and the
Python memory traced stays bounded.
"""

from __future__ import annotations

import json
import re
import tracemalloc
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geohf.data.layouts import read_lost_and_found
from geohf.data.skips import SkipLog
from geohf.data.tables import MAX_ROW_BYTES, read_table
from geohf.errors import UserError
from geohf.inference.inputs import group_by_csv

FUZZ = settings(max_examples=80, deadline=5000, suppress_health_check=list(HealthCheck), derandomize=True)
PEAK = 64 << 20
HUGE = "y" * (MAX_ROW_BYTES + 1)

cells = st.one_of(
    st.text(max_size=12),
    st.sampled_from(['"', '""', "a,b", "line\nbreak", "\0", "nan", "1e999", "-0", "Zürich", "東京", "🗺", "<HUGE>"]),
    st.floats(allow_nan=True).map(str),
)
headers = st.lists(st.sampled_from(["file_name", "latitude", "longitude", "file", "location_id", "city", ""]),
                   max_size=5)  # fmt: skip
encodings = st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1"])


def _csv_text(header: list[str], body: list[list[str]]) -> str:
    def quote(cell: str) -> str:
        return '"' + cell.replace('"', '""') + '"' if any(c in cell for c in ',"\n') else cell

    text = "\n".join(",".join(map(quote, row)) for row in [header, *body]) + "\n"
    return text.replace("<HUGE>", HUGE)  # built here: hypothesis slows down on megabyte values


def _encode(text: str, encoding: str) -> bytes:
    return text.encode(encoding, errors="replace")


def _reason(message: str, path=None) -> str:
    """A message without its file, quoted values and numbers (for counting)."""
    text = message.replace(str(path), "").lstrip(": ") if path is not None else message
    return re.sub(r"\d+", "N", text.split(" (")[0].split(";")[0])[:48]


def _run(check, record, what: str, entry: str, seen: Counter, fixed: bool = True) -> None:
    tracemalloc.start()
    try:
        check()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    ok = peak < PEAK
    record("fuzz", what, entry, f"a table, one line naming the file, or rows listed; < {PEAK >> 20} MiB traced",
           "; ".join(f"{k}: {v:,}" for k, v in seen.most_common(5)) + f"; peak {peak / 2**20:.0f} MiB", ok,
           fixed=fixed)  # fmt: skip
    assert ok, peak


def test_fuzz_csv_tables(tmp_path_factory, record):
    seen = Counter()
    folder = tmp_path_factory.mktemp("fuzz_csv")

    @FUZZ
    @given(headers, st.lists(st.lists(cells, max_size=5), max_size=6), encodings)
    def check(header, body, encoding):
        path = folder / "rows.csv"
        path.write_bytes(_encode(_csv_text(header, body), encoding))
        log = SkipLog()
        try:
            table = read_table(path, log)
        except UserError as err:
            assert str(err).startswith(str(path)) and "\n" not in str(err)
            seen[f"refused: {_reason(str(err), path)}"] += 1
            return
        seen["tables read"] += 1
        seen["rows listed (too long)"] += len(log)
        assert all(isinstance(c, str) for c in table.columns)

    _run(check, record, f"{FUZZ.max_examples} generated CSV tables (quotes, newlines, NUL, 1 MiB fields; UTF-8, "
         "UTF-8 BOM, UTF-16, Latin-1)", "tables.read_table (dataset import)", seen, fixed=False)  # fmt: skip


def test_fuzz_jsonl_tables(tmp_path_factory, record):
    seen = Counter()
    folder = tmp_path_factory.mktemp("fuzz_jsonl")
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(), st.text(max_size=8))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["file_name", "latitude", "longitude", "x"]), inner, max_size=4), max_leaves=8)  # fmt: skip
    lines = st.one_of(values.map(json.dumps), st.text(max_size=20), st.just("[" * 3000), st.just(json.dumps(HUGE)))

    @FUZZ
    @given(st.lists(lines, max_size=6), encodings)
    def check(body, encoding):
        path = folder / "rows.jsonl"
        path.write_bytes(_encode("\n".join(body) + "\n", encoding))
        log = SkipLog()
        try:
            read_table(path, log)
        except UserError as err:
            assert str(err).startswith(str(path)) and "\n" not in str(err)
            seen[f"refused: {_reason(str(err), path)}"] += 1
            return
        seen["tables read"] += 1
        seen["lines listed (too long)"] += len(log)

    _run(check, record, f"{FUZZ.max_examples} generated JSONL tables (any JSON per line, text, 3,000-deep arrays, "
         "1 MiB lines, odd encodings)", "tables.read_table (dataset import)", seen, fixed=False)  # fmt: skip


def test_fuzz_lost_and_found_encodings(tmp_path_factory, record):
    from PIL import Image

    seen = Counter()
    png = tmp_path_factory.mktemp("fuzz_laf_png") / "x.png"
    Image.new("RGB", (4, 4)).save(png)
    texts = st.one_of(
        st.just('{"coordinates": [48.85, 2.35], "country_name": "Île-de-France"}'),
        st.just("[" * 50_000 + "]" * 50_000),
        st.just(json.dumps({"coordinates": [1, 2], "pad": HUGE})),
        st.text(max_size=30),
    )

    @FUZZ
    @given(texts, encodings, st.one_of(st.none(), st.integers(0, 200)))
    def check(text, encoding, cut):
        root = tmp_path_factory.mktemp("laf")
        (root / "location_1.png").write_bytes(png.read_bytes())
        data = _encode(text, encoding)
        (root / "location_1.json").write_bytes(data if cut is None else data[:cut])
        log = SkipLog()
        frame = read_lost_and_found(root, log)
        assert len(frame) + len(log) == 1  # a row or a listed skip
        seen["rows" if len(frame) else f"listed: {_reason(log.entries[0].reason)}"] += 1

    _run(check, record, f"{FUZZ.max_examples} lost-and-found JSON files (odd encodings, cut anywhere, 50,000-deep, "
         "1 MiB)", "layouts.read_lost_and_found (dataset build)", seen)  # fmt: skip


def test_fuzz_views_csv_encodings(tmp_path_factory, record):
    seen = Counter()
    folder = tmp_path_factory.mktemp("fuzz_views")

    @FUZZ
    @given(st.lists(st.lists(cells, min_size=2, max_size=4), max_size=5), encodings)
    def check(body, encoding):
        path = folder / "views.csv"
        path.write_bytes(_encode(_csv_text(["file", "location_id", "latitude"], body), encoding))
        try:
            inputs = group_by_csv(path)
        except ValueError as err:  # the one error predict reports in a line
            assert str(err).startswith(str(path)) and "\n" not in str(err)
            seen[f"refused: {_reason(str(err), path)}"] += 1
            return
        seen["views grouped"] += sum(len(i.images) for i in inputs.items)
        seen["rows refused"] += len(inputs.errors)

    _run(check, record, f"{FUZZ.max_examples} views CSVs (128 kB+ fields, NUL, UTF-16, Latin-1)",
         "inputs.group_by_csv (geohf predict --group-csv)", seen)  # fmt: skip
