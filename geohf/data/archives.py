"""Images inside zip and tar shards, read member by member (truncated shards included).

A shard cut short by an interrupted download has no zip central directory, or ends in the
middle of a tar member. :func:`zip_members` then walks the local file headers from the
start and :func:`tar_members` stops at the cut: the members before it stay readable, the
shard is reported as truncated and the rows whose images were after the cut are counted
by the caller as rows without an image.
"""

from __future__ import annotations

import os
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..files import IMAGE_SUFFIXES

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_LOCAL_SIG = b"PK\x03\x04"


@dataclass(frozen=True)
class MemberRef:
    """Where one image's bytes are: a file, or ``size`` bytes at ``offset`` of an archive (``method``: zip
    compression, 0 stored / 8 deflated; tar members are stored)."""

    path: str
    offset: int = -1
    size: int = -1
    method: int = 0

    def read(self) -> bytes:
        if self.offset < 0:
            return Path(self.path).read_bytes()
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if self.method == zipfile.ZIP_DEFLATED:
            return zlib.decompressobj(-15).decompress(data)
        return data


@dataclass
class ShardIndex:
    """The image members of one shard; ``error`` says why reading stopped early (``None``: complete)."""

    path: str
    members: dict[str, MemberRef]
    error: str | None = None


def _is_image(name: str) -> bool:
    return not name.endswith("/") and Path(name).suffix.lower() in IMAGE_SUFFIXES


def zip_members(path: str | os.PathLike) -> ShardIndex:
    """Image members of a zip, by member name; a zip without a readable central directory is walked
    through its local headers up to the first member that is cut short."""
    path = str(path)
    try:
        with zipfile.ZipFile(path) as zf:
            members = {}
            for info in zf.infolist():
                if not _is_image(info.filename) or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    continue
                members[info.filename] = _zip_data_ref(path, info)
            return ShardIndex(path, members)
    except zipfile.BadZipFile:
        return _scan_local_headers(path)


def _zip_data_ref(path: str, info: zipfile.ZipInfo) -> MemberRef:
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
    start = info.header_offset + _LOCAL_HEADER.size + header[9] + header[10]
    return MemberRef(path, start, info.compress_size, info.compress_type)


def _scan_local_headers(path: str) -> ShardIndex:
    size = os.path.getsize(path)
    members: dict[str, MemberRef] = {}
    pos = 0
    with open(path, "rb") as f:
        while True:
            f.seek(pos)
            raw = f.read(_LOCAL_HEADER.size)
            if len(raw) < _LOCAL_HEADER.size or raw[:4] != _LOCAL_SIG:
                break  # the central directory (never reached in a truncated file) or the cut
            _, _, flags, method, _, _, _, csize, _, nlen, xlen = _LOCAL_HEADER.unpack(raw)
            name = f.read(nlen).decode("utf-8" if flags & 0x800 else "cp437", errors="replace")
            start = pos + _LOCAL_HEADER.size + nlen + xlen
            if flags & 0x08 and csize == 0:
                return ShardIndex(path, members, f"truncated zip: member {name} has no size in its header")
            if start + csize > size:
                return ShardIndex(path, members, f"truncated zip: cut inside member {name}")
            if _is_image(name) and method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                members[name] = MemberRef(path, start, csize, method)
            pos = start + csize
    return ShardIndex(path, members, "truncated zip: no central directory")


def tar_members(path: str | os.PathLike) -> ShardIndex:
    """Image members of a tar (plain; read in place), up to a cut if the file is truncated."""
    path = str(path)
    size = os.path.getsize(path)
    members: dict[str, MemberRef] = {}
    last = "the first member"
    try:
        with tarfile.open(path, "r:") as tf:
            for info in tf:
                if info.offset_data + info.size > size:
                    return ShardIndex(path, members, f"truncated tar: cut inside member {info.name}")
                last = info.name
                if info.isfile() and _is_image(info.name):
                    members[info.name] = MemberRef(path, info.offset_data, info.size, 0)
            end = tf.offset
    except (tarfile.ReadError, EOFError) as err:
        return ShardIndex(path, members, f"truncated tar: {err}")
    with open(path, "rb") as f:  # a complete tar ends in zero blocks; a cut between members leaves none
        f.seek(end)
        marker = f.read(tarfile.BLOCKSIZE)
    if len(marker) < tarfile.BLOCKSIZE or marker.strip(b"\0"):
        return ShardIndex(path, members, f"truncated tar: no end-of-archive blocks after {last}")
    return ShardIndex(path, members)


def tar_json_members(path: str | os.PathLike) -> tuple[dict[str, bytes], str | None]:
    """The ``.json`` members of a webdataset tar by key (member name without its extension)."""
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:") as tf:
            for info in tf:
                if info.isfile() and info.name.endswith(".json"):
                    f = tf.extractfile(info)
                    out[info.name[: -len(".json")]] = f.read()
    except (tarfile.ReadError, EOFError, OSError) as err:
        return out, f"truncated tar: {err}"
    return out, None


def shard_members(path: str | os.PathLike) -> ShardIndex:
    """:func:`zip_members` or :func:`tar_members` by the file's suffix."""
    return zip_members(path) if str(path).lower().endswith(".zip") else tar_members(path)
