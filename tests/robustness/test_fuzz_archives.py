"""Fuzzing the archive readers (zip and tar shards, their JSON members) with hypothesis.

Valid shards are cut, have bytes flipped and size fields overwritten; every member a row could name then
goes through the import's check (:func:`geohf.data.sources.verify_images`). Property: the shard is indexed
(perhaps reported truncated), every member is kept or listed with its reason, nothing raises, and the Python
memory traced stays under a bound far below what the headers claim (sizes up to 4 GiB).
"""

from __future__ import annotations

import io
import struct
import tarfile
import tracemalloc
import zipfile
from collections import Counter

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geohf.data.archives import tar_json_members, tar_members, zip_members
from geohf.data.skips import SkipLog
from geohf.data.sources import verify_images

from .corpus import _jpeg

FUZZ = settings(max_examples=80, deadline=5000, suppress_health_check=list(HealthCheck), derandomize=True)
PEAK = 48 << 20  # bytes traced at most, whatever a header claims


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a/ok.jpg", _jpeg(1), compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("b.jpg", _jpeg(2), compress_type=zipfile.ZIP_STORED)
        zf.writestr("zeros.png", b"\0" * (5 << 20), compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("notes.txt", b"hello")
    return buf.getvalue()


def _tar_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in (("k1.jpg", _jpeg(3)), ("k1.json", b'{"id": "k1", "latitude": 1, "longitude": 2}'),
                           ("k2.jpg", _jpeg(4)), ("k2.json", b"[" * 5000)):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


ZIP, TAR = _zip_bytes(), _tar_bytes()
# offsets of the zip's size and CRC fields (local headers and central directory), where a lie does most harm
ZIP_FIELDS = [
    off + d
    for sig, deltas in ((b"PK\x03\x04", (14, 18, 22)), (b"PK\x01\x02", (16, 20, 24, 42)))
    for off in range(len(ZIP))
    if ZIP.startswith(sig, off)
    for d in deltas
]
TAR_FIELDS = [off + 124 for off in range(0, len(TAR), 512) if TAR[off + 257 : off + 262] == b"ustar"]


def mutations(data: bytes, fields: list[int]):
    """A cut, byte flips and 32-bit size fields overwritten (any value up to 4 GiB), alone or together."""
    cut = st.one_of(st.none(), st.integers(0, len(data)))
    flips = st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=6)
    lies = st.lists(st.tuples(st.sampled_from(fields), st.integers(0, 2**32 - 1)), max_size=3)
    return st.tuples(cut, flips, lies)


def apply(data: bytes, mutation, tar: bool = False) -> bytes:
    cut, flips, lies = mutation
    out = bytearray(data)
    for pos, value in lies:
        if tar:  # an octal size field of 11 digits and a NUL
            out[pos : pos + 12] = b"%011o\0" % min(value, 8**11 - 1)
        else:
            out[pos : pos + 4] = struct.pack("<L", value)
    for pos, value in flips:
        out[pos] = value
    return bytes(out[:cut] if cut is not None else out)


def _check_members(index, seen: Counter) -> None:
    refs = list(index.members.values())
    if index.error:
        seen["shard reported truncated"] += 1
    if not refs:
        return
    log = SkipLog()
    kept = verify_images(pd.DataFrame({"_image": refs}), log)
    assert len(kept) + len(log) == len(refs)  # every member kept or listed
    seen["members kept"] += len(kept)
    for e in log.entries:
        assert e.item.startswith(index.path.rsplit("/", 1)[-1] + ":")  # names the shard and the member
        seen[f"listed: {e.reason.split(' (')[0].split(',')[0][:40]}"] += 1


def _run(check, record, what: str, entry: str, seen: Counter) -> None:
    tracemalloc.start()
    try:
        check()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    top = "; ".join(f"{k}: {v:,}" for k, v in seen.most_common(6))
    ok = peak < PEAK
    record("fuzz", what, entry, f"no exception; each member kept or listed; < {PEAK >> 20} MiB traced",
           f"{top}; peak {peak / 2**20:.0f} MiB", ok, fixed=True)  # fmt: skip
    assert ok, peak


def test_fuzz_zip_shards(tmp_path_factory, record):
    seen = Counter()
    folder = tmp_path_factory.mktemp("fuzz_zip")

    @FUZZ
    @given(mutations(ZIP, ZIP_FIELDS))
    def check(mutation):
        path = folder / "shard.zip"
        path.write_bytes(apply(ZIP, mutation))
        _check_members(zip_members(path), seen)
        seen["shards"] += 1

    _run(check, record, f"{FUZZ.max_examples} mutated zip shards (cuts, flipped bytes, sizes and CRCs up to 4 GiB)",
         "archives.zip_members + sources.verify_images", seen)  # fmt: skip


def test_fuzz_tar_shards(tmp_path_factory, record):
    seen = Counter()
    folder = tmp_path_factory.mktemp("fuzz_tar")

    @FUZZ
    @given(mutations(TAR, TAR_FIELDS))
    def check(mutation):
        path = folder / "shard.tar"
        path.write_bytes(apply(TAR, mutation, tar=True))
        _check_members(tar_members(path), seen)
        metas = tar_json_members(path)
        assert all(len(v) <= 1 << 20 for v in metas.data.values())
        seen["JSON members read"] += len(metas.data)
        seen["JSON members refused"] += len(metas.refused)
        seen["shards"] += 1

    _run(check, record, f"{FUZZ.max_examples} mutated webdataset tar shards (cuts, flipped bytes, sizes up to 8 GiB)",
         "archives.tar_members + tar_json_members + verify_images", seen)  # fmt: skip
