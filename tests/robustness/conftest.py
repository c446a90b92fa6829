"""Records every robustness case and its outcome; writes docs/robustness.md when asked.

GEOHF_ROBUSTNESS_REPORT=docs/robustness.md pytest tests/robustness
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROWS: list[dict] = []

NOTES = [
    "",
    "## Decisions and the tests that live elsewhere",
    "",
    "- **Longitudes in 181–360** are read as the 0–360° convention and wrapped to −179…0 (kept, and listed",
    "  in `skipped.csv` with action `fixed` so the change is visible); beyond 360 is rejected. Latitudes",
    "  beyond ±90 are always rejected: there is no safe guess.",
    "- **Swapped latitude/longitude** is skipped with the reason `probably swapped`; `--fix-swapped` swaps",
    "  (and reports) the rows where only the swapped order lands on land.",
    "- **Decompression bombs** (over PIL's 89 Mpx limit) are refused with a message, never decoded.",
    "- **HEIC** is read when `pillow-heif` is installed; without it the error says how to install it.",
    "- kill -9 during training:",
    "  `tests/training/test_training_extras.py::test_resume_after_kill_matches_the_uninterrupted_run`",
    "  (resumed weights are bitwise identical to the uninterrupted run, same seed).",
    "- kill -9 during `geohf collect run`: `tests/collect/test_collect.py::test_kill_mid_run_then_resume`",
    "  (no duplicated",
    "  or half-written images; the resumed output equals an uninterrupted run's).",
    "- The Gradio app binds to 127.0.0.1 and refuses uploads over `--max-file-size` (20 MB by default):",
    "  `tests/app/test_app.py::test_app_predicts_and_plays_a_round_headless` (also checks no connection leaves",
    "  the machine).",
    "- **Pickled weights** (a folder with only `pytorch_model.bin`) load through `torch.load(weights_only=True)`",
    "  only, with a warning naming the file; a pickle holding anything but tensors is refused and never run.",
    "- **Disk full** is simulated with `RLIMIT_FSIZE` (SIGXFSZ ignored, so writes fail with EFBIG as on a full",
    "  disk); every `geohf` command reports it in one line (also when Arrow or safetensors raise it).",
    "- kill -9 during `geohf index build`: `tests/robustness/test_index_faults.py` (no half index, ever).",
    "- The pages in a real browser (headless Chromium, outside requests blocked, no console errors):",
    "  `tests/app/test_browser.py` (Predict tab, one Game round, a `geohf predict --map` file online and with",
    "  `--map-offline`: Leaflet inlined, country outlines as the base layer, no request leaves the page).",
    "- kill -9 during `geohf evaluate`: `tests/robustness/test_faults.py` (no half-written report).",
    "- kill -9 of a `--num-proc` worker during `geohf dataset build`'s image check (also the OOM killer, a",
    "  crash, a worker that cannot import geohf): `tests/data/test_workers.py` (the lost chunks are retried in a",
    "  fresh pool and the result equals the serial check's; a worker that keeps dying stops the build in one line).",
    "- The app's memory under load: `geohf app` caps glibc's malloc arenas and fixes its mmap threshold",
    "  (`geohf.malloc.SERVER`: the dynamic threshold kept each request's freed buffers in the heap), draws",
    "  its world maps from cached paths (geopandas' `GeoDataFrame.plot` made a matplotlib class per call),",
    "  and tells Gradio to delete its cached uploads and files after an hour (it keeps them otherwise).",
    "- Remote code: geohf users never need `trust_remote_code`; users without geohf installed do (see",
    "  `docs/training.md`), and the model folder carries only geohf's own modelling files for it.",
    "",
    "## Bounded reads: the limits",
    "",
    "Every byte that comes from outside is read under a limit; a refusal is one line naming the file or member,",
    "listed in `skipped.csv`, and the rest of the source imports.",
    "",
    "- **One image** (a file, an archive member): at most `geohf.images.max_image_bytes()`, PIL's pixel limit",
    "  (`Image.MAX_IMAGE_PIXELS`, 89.5 Mpx) at 4 bytes a pixel plus 1 MiB = 358,962,516 bytes. A regular file",
    "  over it is refused from its size, unread; a zip member from the size its header declares.",
    "- **Deflated members** are inflated 1 MiB at a time (`geohf.data.archives.inflate_bounded`): refused past",
    "  the cap, or past 100x their compressed size once 4 MiB are out (images are compressed already: a JPEG",
    "  deflates by a few per cent), so a header that lies costs 5 MiB, never the member's size. The zip CRC-32",
    "  is checked; encrypted members, other compressions (bzip2, lzma...) and tar links are refused by name.",
    "- **`geohf dataset import` checks what it stores**: each image's header is decoded (format, size, the",
    "  pixel limit) without decoding pixels or re-encoding (`geohf.images.probe_image`, 4 threads). Pixel data",
    "  cut short behind an intact header is not seen by the header check; it is refused where pixels are",
    "  decoded (`dataset build`'s image check, prediction).",
    "- **Metadata tables** (CSV / TSV / JSONL / Parquet, `geohf.data.tables`): at most 8 GiB; a CSV / JSONL line",
    "  over 1 MiB is left out unread and listed (a header line over it refuses the table); text must be UTF-8",
    "  (one line says so otherwise). Per-image JSON (lost-and-found files, OSV-5M's `<key>.json` members): at",
    "  most 1 MiB, nesting too deep for Python's parser is listed as unreadable. Views CSVs (`predict",
    "  --group-csv`): at most 256 MiB, Python's csv field limit (128 kB), UTF-8. geohf reads no KML.",
    "- **URLs** (`geohf.images.fetch_url`): 64 MiB (refused from `Content-Length` before reading), a time-out per",
    "  read (30 s) and a total deadline (120 s): a server that trickles bytes ends within deadline + time-out.",
    "  A gzip-encoded answer is capped on its decoded size.",
    "- **Parquet batches** are written once their images reach 256 MiB as well as every 256 rows (an Arrow",
    "  binary array holds at most 2 GiB).",
    "",
    "## Faults fixed in this round: before / after",
    "",
    "Measured on the 2-core machine shared with other jobs (times are indicative, memory is not).",
    "",
    "| input | before | after |",
    "|---|---|---|",
    "| im2gps3k zip, a member inflating to 2.25 GiB (2.3 MB deflated) named `.jpg` | traceback: pyarrow"
    " `ArrowCapacityError` after 13 s, peak RSS 4.8 GB | exit 0 in 5 s, peak RSS 350 MB; the member listed in"
    " `skipped.csv`, 6 images stored |",
    "| the same, 1 GiB, header honest / header saying 5,000 bytes (each alone with one JPEG) | exit 0, the 1 GiB"
    " of zeros stored as an image; peak RSS 4.4 GB, 46 s / 54 s | refused from the header / after 5 MiB; peak"
    " RSS 317 / 361 MB |",
    "| 64 MiB of zeros (under the cap) | stored as an image, peak RSS 549 MB | refused (ratio), 360 MB |",
    "| text, 0 bytes, a 400-Mpx PNG, fake HEIC, an encrypted member, a wrong CRC, a cut deflate stream, each"
    " named `.jpg` | stored as images (fail later, in training) | listed with the reason, not stored |",
    "| a bzip2 member | reported as `row without an image` (misleading) | `compressed with bzip2: ... re-pack` |",
    "| random bytes as deflate data | traceback (`zlib.error`), nothing imported | listed, the rest imports |",
    "| a tar symlink named `.jpg` | `row without an image` | `not a regular file` |",
    "| a lost-and-found / OSV-5M JSON nested 100,000 deep | traceback (`RecursionError`) | listed |",
    "| an OSV-5M `<key>.json` that is a list | traceback (`AttributeError`) | listed |",
    "| a CSV / JSONL row of 1 MiB+ | read into memory whatever its size | listed, unread |",
    "| `fetch_url`, a server sending 1 byte every 0.25 s | still waiting after 20 s (250 s for this body, any"
    " time for an endless one) | refused after 1.5 s (the deadline) |",
    "| `fetch_url`, `Content-Length: 100 MiB` | read until the read time-out, `download failed` | refused"
    " before reading: `larger than 2 MiB` |",
    "| JPEG / PNG with a damaged EXIF block (120 fuzzed files) | 15 refused whole (PNGs: `not a TIFF file`) |"
    " all load, EXIF read as none |",
    "| `write_estimated_copy` of such a file | traceback (`SyntaxError`) | the copy carries the estimate |",
]


@pytest.fixture
def record():
    """``record(group, case, entry_point, expected, outcome, ok)`` adds a row to the table."""

    def add(group: str, case: str, entry: str, expected: str, outcome: str, ok: bool, fixed: bool = False):
        ROWS.append(
            {
                "group": group,
                "case": case,
                "entry": entry,
                "expected": expected,
                "outcome": outcome.replace("|", "/").replace("\n", " ")[:160],
                "ok": ok,
                "fixed": fixed,
            }
        )
        return ok

    return add


def pytest_sessionfinish(session, exitstatus):
    target = os.environ.get("GEOHF_ROBUSTNESS_REPORT")
    if not target or not ROWS:
        return
    passed = sum(r["ok"] for r in ROWS)
    fixed = sum(r["fixed"] for r in ROWS)
    lines = [
        "# Robustness: the bad-input corpus",
        "",
        "Generated by `GEOHF_ROBUSTNESS_REPORT=docs/robustness.md pytest tests/robustness` — every case runs "
        "through the entry point a user would hit. Outputs (one writer each, kill -9, a full disk) and the app "
        "under load: [robustness_outputs.md](robustness_outputs.md).",
        "",
        f"**{len(ROWS)} cases, {passed} behave as expected, {fixed} needed a fix in geohf to get there.**",
        "",
        "| group | cases tried | behave as expected | needed a fix |",
        "|---|---|---|---|",
        *(
            f"| {g} | {sum(r['group'] == g for r in ROWS)} | {sum(r['ok'] for r in ROWS if r['group'] == g)} "
            f"| {sum(r['fixed'] for r in ROWS if r['group'] == g)} |"
            for g in dict.fromkeys(r["group"] for r in ROWS)
        ),
        "",
        "Each row: the input (case), the command or function a user reaches it through (entry point), what",
        "geohf must do (expected) and what it did in the run that wrote this page (outcome).",
        "",
        "| group | case | entry point | expected | outcome | ok |",
        "|---|---|---|---|---|---|",
    ]
    for r in ROWS:
        mark = "✅" if r["ok"] else "❌"
        lines.append(
            f"| {r['group']} | {r['case']} | `{r['entry']}` | {r['expected']} | {r['outcome']} | {mark}"
            + (" (fixed)" if r["fixed"] else "")
            + " |"
        )
    lines += NOTES
    Path(target).write_text("\n".join(lines) + "\n", encoding="utf-8")
