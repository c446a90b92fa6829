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
from ..images import ImageLoadError, max_image_bytes, read_file_bounded, too_big

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_LOCAL_SIG = b"PK\x03\x04"


MAX_INFLATE_RATIO = 100
"""A deflated member inflating more than this many times its compressed size is refused (images barely
compress: JPEG, PNG and WebP are compressed already) once it passes :data:`RATIO_FLOOR` bytes."""
RATIO_FLOOR = 4 << 20
INFLATE_STEP = 1 << 20
MAX_JSON_MEMBER_BYTES = 1 << 20
"""The largest ``<key>.json`` metadata member read from a webdataset tar (OSV-5M's are ~1 kB)."""


@dataclass(frozen=True)
class MemberRef:
    """Where one image's bytes are: a file, or ``size`` bytes at ``offset`` of an archive (``method``: zip
    compression, 0 stored / 8 deflated; tar members are stored).

    ``name``: the member's name in its archive; ``declared``: the uncompressed size its header gives (-1:
    unknown); ``crc``: the zip CRC-32 (-1: none); ``refused``: why the member is never read (encrypted, an
    unsupported compression, not a regular file), reported when a row asks for it."""

    path: str
    offset: int = -1
    size: int = -1
    method: int = 0
    name: str = ""
    declared: int = -1
    crc: int = -1
    refused: str = ""

    @property
    def where(self) -> str:
        """The file, or ``<archive file name>:<member name>``: what messages and ``skipped.csv`` name."""
        return f"{Path(self.path).name}:{self.name}" if self.offset >= 0 or self.refused else self.path

    def read(self, max_bytes: int | None = None) -> bytes:
        """The image's bytes, never more than ``max_bytes`` (default :func:`~geohf.images.max_image_bytes`):
        deflated members are inflated step by step and refused past the cap or :data:`MAX_INFLATE_RATIO`,
        before the bytes are held. :class:`~geohf.images.ImageLoadError` names the member and the reason."""
        cap = max_image_bytes() if max_bytes is None else max_bytes
        if self.refused:
            raise ImageLoadError(self.where, f"refused: {self.refused}")
        if self.offset < 0:
            return read_file_bounded(self.path, cap)
        declared = self.declared if self.declared >= 0 else self.size
        if declared > cap or self.size > cap:
            raise ImageLoadError(self.where, f"refused: {too_big(max(declared, self.size), cap)}")
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) < self.size:
            raise ImageLoadError(self.where, "refused: the archive ends inside this member (truncated)")
        if self.method == zipfile.ZIP_DEFLATED:
            data = inflate_bounded(data, cap, self.where)
        if self.crc >= 0 and zlib.crc32(data) != self.crc:
            raise ImageLoadError(self.where, "refused: CRC-32 mismatch, the member is damaged; re-download the archive")
        return data


def inflate_bounded(data: bytes, cap: int, where: str) -> bytes:
    """Raw deflate ``data`` inflated ``INFLATE_STEP`` bytes at a time: refused past ``cap`` bytes, past
    :data:`MAX_INFLATE_RATIO` (checked from :data:`RATIO_FLOOR` bytes), or when the stream is corrupt or cut."""
    inflater = zlib.decompressobj(-15)
    out = bytearray()
    tail = data
    try:
        while not inflater.eof:
            chunk = inflater.decompress(tail, min(INFLATE_STEP, cap + 1 - len(out)))
            tail = inflater.unconsumed_tail
            if not chunk and not tail:
                break  # all input used, nothing pending: the stream is cut
            out += chunk
            used = len(data) - len(tail)
            if len(out) > cap:
                raise ImageLoadError(where, f"refused: inflates to over {too_big(cap + 1, cap)}")
            if len(out) > RATIO_FLOOR and len(out) > MAX_INFLATE_RATIO * max(used, 1):
                raise ImageLoadError(
                    where,
                    f"refused: inflates over {MAX_INFLATE_RATIO}x ({len(out):,} bytes from the first {used:,}), a "
                    "zip bomb rather than an image; re-pack the archive without it",
                )
    except zlib.error as err:
        raise ImageLoadError(where, f"refused: corrupt deflate data ({err}); re-download the archive") from err
    if not inflater.eof:
        raise ImageLoadError(where, "refused: the deflate data ends early (truncated); re-download the archive")
    return bytes(out)


@dataclass
class ShardIndex:
    """The image members of one shard; ``error`` says why reading stopped early (``None``: complete)."""

    path: str
    members: dict[str, MemberRef]
    error: str | None = None


def _is_image(name: str) -> bool:
    return not name.endswith("/") and Path(name).suffix.lower() in IMAGE_SUFFIXES


METHOD_NAMES = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma", 9: "deflate64", 93: "zstandard"}


def _zip_refusal(flags: int, method: int) -> str:
    """Why a zip member is never read ("" when it can be): encrypted, or an unsupported compression."""
    if flags & 0x1:
        return "encrypted member: geohf reads no passwords; unpack the archive first"
    if method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        kind = METHOD_NAMES.get(method, f"method {method}")
        return f"compressed with {kind}: geohf reads stored or deflated members; re-pack the archive"
    return ""


def zip_members(path: str | os.PathLike) -> ShardIndex:
    """Image members of a zip, by member name; a zip without a readable central directory is walked
    through its local headers up to the first member that is cut short. Members that cannot be read
    (encrypted, other compressions) are kept with the reason, reported when a row names them."""
    path = str(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, struct.error):
        return _scan_local_headers(path)
    members = {}
    for info in infos:
        if _is_image(info.filename):
            members[info.filename] = _zip_data_ref(path, info)
    return ShardIndex(path, members)


def _zip_data_ref(path: str, info: zipfile.ZipInfo) -> MemberRef:
    refused = _zip_refusal(info.flag_bits, info.compress_type)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        raw = f.read(_LOCAL_HEADER.size)
    if len(raw) < _LOCAL_HEADER.size or raw[:4] != _LOCAL_SIG:
        refused = refused or "its local header is missing or damaged; re-download the archive"
        return MemberRef(path, name=info.filename, refused=refused)
    header = _LOCAL_HEADER.unpack(raw)
    start = info.header_offset + _LOCAL_HEADER.size + header[9] + header[10]
    return MemberRef(path, start, info.compress_size, info.compress_type, info.filename, info.file_size, info.CRC,
                     refused)  # fmt: skip


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
            _, _, flags, method, _, _, crc, csize, usize, nlen, xlen = _LOCAL_HEADER.unpack(raw)
            name = f.read(nlen).decode("utf-8" if flags & 0x800 else "cp437", errors="replace")
            start = pos + _LOCAL_HEADER.size + nlen + xlen
            if flags & 0x08 and csize == 0:
                return ShardIndex(path, members, f"truncated zip: member {name} has no size in its header")
            if start + csize > size:
                return ShardIndex(path, members, f"truncated zip: cut inside member {name}")
            if _is_image(name):
                members[name] = MemberRef(path, start, csize, method, name, usize, crc, _zip_refusal(flags, method))
            pos = start + csize
    return ShardIndex(path, members, "truncated zip: no central directory")


def tar_members(path: str | os.PathLike) -> ShardIndex:
    """Image members of a tar (plain; read in place), up to a cut if the file is truncated; a member named
    like an image that is not a regular file (a link, a device) is kept with the reason."""
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
                if not _is_image(info.name):
                    continue
                if info.isfile():
                    members[info.name] = MemberRef(path, info.offset_data, info.size, 0, info.name)
                else:
                    why = "not a regular file (a link or a device): geohf reads regular members only"
                    members[info.name] = MemberRef(path, name=info.name, refused=why)
            end = tf.offset
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        return ShardIndex(path, members, f"truncated tar: {err}")
    with open(path, "rb") as f:  # a complete tar ends in zero blocks; a cut between members leaves none
        f.seek(end)
        marker = f.read(tarfile.BLOCKSIZE)
    if len(marker) < tarfile.BLOCKSIZE or marker.strip(b"\0"):
        return ShardIndex(path, members, f"truncated tar: no end-of-archive blocks after {last}")
    return ShardIndex(path, members)


@dataclass
class JsonMembers:
    """The ``<key>.json`` members of a webdataset tar: their bytes by key, the ones refused (key -> reason), and
    why reading stopped early (``None``: complete)."""

    data: dict[str, bytes]
    refused: dict[str, str]
    error: str | None = None


def tar_json_members(path: str | os.PathLike, max_bytes: int = MAX_JSON_MEMBER_BYTES) -> JsonMembers:
    """The ``.json`` members of a webdataset tar by key (member name without its extension); one over
    ``max_bytes`` is refused unread."""
    out = JsonMembers({}, {})
    try:
        with tarfile.open(path, "r:") as tf:
            for info in tf:
                if info.isfile() and info.name.endswith(".json"):
                    key = info.name[: -len(".json")]
                    if info.size > max_bytes:
                        out.refused[key] = (
                            f"metadata member of {info.size:,} bytes, over the {max_bytes:,}-byte limit for one "
                            "image's JSON; re-download the shard"
                        )  # fmt: skip
                        continue
                    out.data[key] = tf.extractfile(info).read(max_bytes)
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        out.error = f"truncated tar: {err}"
    return out


def shard_members(path: str | os.PathLike) -> ShardIndex:
    """:func:`zip_members` or :func:`tar_members` by the file's suffix."""
    return zip_members(path) if str(path).lower().endswith(".zip") else tar_members(path)
