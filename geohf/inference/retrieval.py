"""Retrieval refinement (PIGEON, Haas et al., CVPR 2024): move the guess to a training image that
looks like the query, inside the geocells the head finds most likely.

A :class:`GeoIndex` is the *gallery*: the model's normalised embedding of every training image, its
coordinates and its cell (the primary head's class). ``geohf index build`` streams it into the model
folder as the batches arrive (``index/gallery-NNNNN.safetensors`` float16 shards, see :mod:`.gallery`,
``index/index.json``, and ``index/ann.<backend>`` for an ANN index built from the shards);
:class:`~geohf.inference.predictor.GeoPredictor` then loads it with the model (the embeddings and a faiss
index memory-mapped) and refines.

Refinement (:meth:`GeoIndex.refine`), per query:

1. the ``top_k`` cells of the head's probabilities ``p_c``;
2. the ``neighbours`` nearest gallery images by cosine similarity (exact matmul for small galleries,
   an ANN index for large ones, its candidates ranked by their exact similarity, see :func:`resolve_search`);
   those in the top cells are the candidates;
3. each top cell scores ``p_c · exp(s_c / temperature)`` where ``s_c`` is the similarity of its best
   candidate (PIGEON: cell probability times a temperature softmax over the cells' best matches);
4. the guess moves to the best candidate of the best cell, unless that is more than ``max_shift_km``
   from the head's guess: then the best cell whose candidate is within reach, else the guess stays.

PIGEON matches against per-cell *prototypes* (OPTICS clusters of training locations, mean embedding)
and then picks the best image inside the chosen cluster. geohf matches the images directly (kNN):
the final location is a training image in both, the kNN search is one batched (and, for large
galleries, sub-linear) query instead of a scan per candidate cell, and the build needs no O(n²)
clustering per cell.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError, one_line
from ..files import TMP_SUFFIX, temp_path
from ..geo.sphere import haversine_km
from .gallery import (
    LEGACY_GALLERY,
    SHARD_ROWS,
    GalleryBatch,
    GalleryVectors,
    GalleryWriter,
    disk_full,
    memmap,
    open_vectors,
    read_header,
)
from .names import BACKENDS, SEARCHES
from .predictions import GeoPredictions

INDEX_FOLDER = "index"
GALLERY_FILE = LEGACY_GALLERY
INFO_FILE = "index.json"
# galleries from this size up get an ANN index with ``--search auto`` (benchmarks/retrieval.py and
# benchmarks/index_memory.py): faiss IVF-PQ, built shard by shard in flat memory, memory-mapped, its
# candidates ranked again with the float16 gallery; usearch's HNSW is in memory and holds a second copy
AUTO_ANN_FROM = 50_000
AUTO_BACKEND = "faiss"


@dataclass
class RetrievalParams:
    """How :meth:`GeoIndex.refine` moves a guess (tuned on a validation split by ``tune_retrieval``)."""

    top_k: int = 5
    temperature: float = 0.1
    neighbours: int = 32
    max_shift_km: float = 1000.0


@dataclass
class IndexInfo:
    """What an index was built with: it only fits the model it was built from."""

    backbone: str
    embed_dim: int
    fingerprint: str
    head: str
    num_classes: int
    size: int
    search: str
    dtype: str = "float16"
    dataset: str | None = None
    split: str | None = None
    shards: list[str] = field(default_factory=list)
    """The gallery's shard files in row order (none: the one ``gallery.safetensors`` of an older index)."""
    ann_files: list[str] = field(default_factory=list)
    """The ANN index's files (none: ``ann.<search>`` of an older index, when it has one)."""

    def gallery_files(self) -> list[str]:
        return list(self.shards) or [LEGACY_GALLERY]

    def ann_paths(self) -> list[str]:
        return list(self.ann_files) or ([ANN_FILE.format(self.search)] if self.search in BACKENDS else [])

    def files(self) -> list[str]:
        """Every file of the index but ``index.json``."""
        return self.gallery_files() + self.ann_paths()


def model_fingerprint(model) -> str:
    """A hash of what makes embeddings and cells comparable: backbone, embedding size, primary head
    (name, partition, classes)."""
    spec = model.config.head()
    what = {
        "backbone": model.config.backbone,
        "embed_dim": int(model.config.embed_dim or 0),
        "head": spec.name,
        "partition": spec.partition,
        "labels": list(spec.labels),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


def exact_search(gallery: torch.Tensor | GalleryVectors, queries: torch.Tensor, k: int, chunk: int = 65_536):
    """``(similarities, indices)``, each (Q, k): the ``k`` gallery rows with the largest inner product
    (cosine for normalised rows), a float32 matmul over chunks of the (float16) gallery, in memory or
    memory-mapped."""
    queries = queries.float()
    k = min(k, gallery.shape[0])
    best_s = torch.full((queries.shape[0], 0), -torch.inf)
    best_i = torch.zeros((queries.shape[0], 0), dtype=torch.int64)
    if isinstance(gallery, GalleryVectors):
        parts = ((start, torch.from_numpy(np.asarray(rows, np.float32))) for start, rows in gallery.chunks(chunk))
    else:
        parts = ((start, gallery[start : start + chunk]) for start in range(0, gallery.shape[0], chunk))
    for start, rows in parts:
        s = queries @ rows.float().T
        s, i = s.topk(min(k, s.shape[1]), dim=1)
        best_s, order = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
        best_i = torch.cat([best_i, i + start], 1).gather(1, order)
    return best_s, best_i


IVF_LISTS_MAX = 1024
"""At most this many inverted lists (k-means cells) in a faiss index: its training and filling cost grow with them."""
PQ_FROM = 10_000
"""faiss indexes of this many rows or more keep product-quantised codes (one byte per 8 dimensions: 64 bytes a
row at 512-d); smaller ones 8-bit scalar codes (one byte per dimension)."""
RERANK = 4
"""A faiss search finds ``RERANK * k`` candidates by their codes; the gallery's float16 embeddings rank them."""
ANN_FILE = "ann.{}"


def ivf_lists(n: int) -> int:
    return int(max(1, min(IVF_LISTS_MAX, 4 * np.sqrt(n), n // 39)))


def _train_ivf(vectors: GalleryVectors, threads: int = 0):
    """An empty faiss IVF index over ``vectors`` (inner product), trained on a seeded sample of them: IVF-PQ
    (``dim / 8`` bytes a row) from :data:`PQ_FROM` rows, else IVF-SQ8 (``dim`` bytes a row)."""
    faiss = _import("faiss", "faiss-cpu")
    if threads:
        faiss.omp_set_num_threads(threads)
    n, dim = vectors.shape
    lists = ivf_lists(n)
    quantiser = faiss.IndexFlatIP(dim)
    if n >= PQ_FROM and dim % 8 == 0:
        index = faiss.IndexIVFPQ(quantiser, dim, lists, dim // 8, 8, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFScalarQuantizer(
            quantiser, dim, lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
    index.own_fields = True
    quantiser.this.disown()
    index.train(vectors.sample(64 * lists))
    vectors.release()
    index.nprobe = min(lists, max(32, lists // 16))
    return index


def _add_rows(index, shard: np.ndarray, first: int) -> None:
    """Add one shard's rows to a faiss index, their ids their gallery row numbers."""
    for start in range(0, len(shard), 16_384):
        rows = np.asarray(shard[start : start + 16_384], dtype=np.float32)
        index.add_with_ids(rows, np.arange(first + start, first + start + len(rows), dtype=np.int64))


def _fill_ivf(trained, shard: np.ndarray, first: int):
    """A copy of ``trained`` holding one shard's rows."""
    part = _import("faiss", "faiss-cpu").clone_index(trained)
    _add_rows(part, shard, first)
    return part


def write_ivf(trained, vectors: GalleryVectors, path: Path) -> None:
    """Fill ``trained`` with ``vectors`` shard by shard into ``path``, in faiss's own format for an IVF index
    (what ``faiss.write_index`` writes for the whole index in memory, byte for byte), holding one shard's codes
    at a time: each shard's codes go to a part file, then each part is read back and its lists written at
    their places in ``path``.

    faiss writes an IVF index as its header (with ``ntotal``), its quantisers, then the inverted lists:
    ``ilar``, ``nlist``, ``code_size``, ``full`` (or ``sprs``: index and size of the non-empty lists only, when
    at most half are non-empty), the sizes (a count, then the values), and per non-empty list its codes then
    its ids (int64)."""
    faiss = _import("faiss", "faiss-cpu")
    empty = faiss.serialize_index(trained).tobytes()
    nlist, code_size = trained.nlist, trained.code_size
    tail = b"ilar" + struct.pack("<QQ", nlist, code_size) + b"sprs" + struct.pack("<Q", 0)
    if trained.ntotal != 0 or not empty.endswith(tail) or struct.unpack_from("<q", empty, 8)[0] != 0:
        raise RuntimeError("unexpected faiss index layout: build with --search usearch or exact")
    parts, sizes = [], np.zeros((len(vectors.shards), nlist), dtype=np.int64)
    try:
        for s, (shard, first) in enumerate(zip(vectors.shards, vectors.starts)):
            part = _fill_ivf(trained, shard, int(first))
            sizes[s] = [part.invlists.list_size(i) for i in range(nlist)]
            parts.append(path.with_name(f".{path.name}.{s:05d}.part"))
            faiss.write_index(part, str(parts[-1]))
            del part
            vectors.release(s)
        per_list = sizes.sum(0)
        if (per_list > 0).sum() > nlist // 2:
            listing = b"full" + struct.pack("<Q", nlist) + per_list.astype("<u8").tobytes()
        else:
            full = np.nonzero(per_list)[0]
            pairs = np.stack([full, per_list[full]], 1).astype("<u8")
            listing = b"sprs" + struct.pack("<Q", pairs.size) + pairs.tobytes()
        head = empty[:8] + struct.pack("<q", int(per_list.sum())) + empty[16 : len(empty) - len(tail)]
        head += b"ilar" + struct.pack("<QQ", nlist, code_size) + listing
        # list i's codes, then its ids, from byte ``block[i]``; a shard's rows of the list after the earlier shards'
        block = len(head) + np.concatenate([[0], np.cumsum(per_list * (code_size + 8))[:-1]])
        before = np.cumsum(sizes, 0) - sizes  # (shards, lists): rows of the list in earlier shards
        with open(path, "wb") as f:
            f.write(head)
            f.truncate(int(block[-1] + per_list[-1] * (code_size + 8)))
            for s, part_path in enumerate(parts):
                part = faiss.read_index(str(part_path))
                for i in np.nonzero(sizes[s])[0]:
                    n = int(sizes[s, i])
                    codes = faiss.rev_swig_ptr(part.invlists.get_codes(int(i)), n * code_size)
                    ids = faiss.rev_swig_ptr(part.invlists.get_ids(int(i)), n)
                    os.pwrite(f.fileno(), codes.tobytes(), int(block[i] + before[s, i] * code_size))
                    ids_at = block[i] + per_list[i] * code_size + before[s, i] * 8
                    os.pwrite(f.fileno(), ids.astype("<i8").tobytes(), int(ids_at))
                del part
                part_path.unlink()
            os.fsync(f.fileno())
    finally:
        for p in parts:
            p.unlink(missing_ok=True)


@dataclass
class AnnIndex:
    """An approximate index over normalised embeddings (inner product): faiss-cpu's IVF (inverted lists over
    k-means cells holding compressed codes, see :func:`_train_ivf`; its candidates are ranked again with the
    gallery's embeddings) or usearch's HNSW graph (float16). ``files``: the files it was read from (a faiss
    index is memory-mapped from them)."""

    backend: str
    index: object
    files: tuple[Path, ...] = ()

    @classmethod
    def build(
        cls, backend: str, embeddings: np.ndarray | GalleryVectors, threads: int = 0, path: Path | None = None
    ) -> AnnIndex:
        """Build over ``embeddings`` (an array or the gallery's shards); with ``path``, a faiss index is written
        there shard by shard (flat memory) and memory-mapped from it."""
        vectors = embeddings if isinstance(embeddings, GalleryVectors) else GalleryVectors([np.asarray(embeddings)])
        n, dim = vectors.shape
        if backend == "faiss":
            index = _train_ivf(vectors, threads)
            if path is not None:
                write_ivf(index, vectors, path)
                return cls.load(backend, path)
            for shard, first in zip(vectors.shards, vectors.starts):
                _add_rows(index, shard, int(first))
            return cls(backend, index)
        if backend == "usearch":
            usearch = _import("usearch.index", "usearch")
            index = usearch.Index(ndim=dim, metric="ip", dtype="f16", connectivity=16, expansion_add=64)
            for first, rows in vectors.chunks():
                keys = np.arange(first, first + len(rows), dtype=np.uint64)
                index.add(keys, np.ascontiguousarray(rows, dtype=np.float16), threads=threads, log=False)
            vectors.release()
            ann = cls(backend, index)
            if path is not None:
                ann.save(path)
            return ann
        raise UserError(f"--search {backend}: unknown; choose from {', '.join(SEARCHES)}")

    def candidates(self, k: int) -> int:
        """How many rows a search for ``k`` neighbours asks this index for (to be ranked again exactly)."""
        return RERANK * k if self.backend == "faiss" else k

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(similarities, indices)`` (Q, k); -1 where fewer than ``k`` were found."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.backend == "faiss":
            return self.index.search(queries, k)
        self.index.expansion_search = max(64, 2 * k)
        found = self.index.search(queries, k)  # Matches for one query, BatchMatches for several
        keys = found.keys.reshape(len(queries), -1).astype(np.int64)
        sims = 1.0 - found.distances.reshape(len(queries), -1).astype(np.float32)  # "ip" distance: 1 - dot
        counts = np.atleast_1d(getattr(found, "counts", len(found)))
        keys[np.arange(keys.shape[1])[None, :] >= counts[:, None]] = -1
        return sims, keys

    def save(self, path: Path) -> None:
        """Write it to ``path``: the files it was read from are copied, an index built in memory written."""
        if self.files:
            if self.files[0].resolve() != Path(path).resolve():
                shutil.copyfile(self.files[0], path)
        elif self.backend == "faiss":
            _import("faiss", "faiss-cpu").write_index(self.index, str(path))
        else:
            self.index.save(str(path))
        with open(path, "rb") as f:
            os.fsync(f.fileno())

    @classmethod
    def load(cls, backend: str, path: Path) -> AnnIndex:
        """A faiss index memory-mapped (its inverted lists stay on disk), a usearch index read."""
        if backend == "faiss":
            faiss = _import("faiss", "faiss-cpu")
            return cls(backend, faiss.read_index(str(path), faiss.IO_FLAG_MMAP), (Path(path),))
        return cls(backend, _import("usearch.index", "usearch").Index.restore(str(path)), (Path(path),))


def _import(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        how = 'pip install "geohf[retrieval]"'
        raise UserError(
            f"this ANN index needs {package}, which is not installed: {how} (or build with --search exact)"
        ) from None


def resolve_search(search: str, size: int) -> str:
    """``auto``: exact search below :data:`AUTO_ANN_FROM` gallery entries, else :data:`AUTO_BACKEND`."""
    if search not in SEARCHES:
        raise UserError(f"--search {search}: unknown; choose from {', '.join(SEARCHES)}")
    if search != "auto":
        return search
    return AUTO_BACKEND if size >= AUTO_ANN_FROM else "exact"


@dataclass
class GeoIndex:
    """The gallery of one model: normalised embeddings (N, D), coordinates, cell per row, and how to refine.

    Attributes:
        embeddings: (N, D) float16, L2-normalised, in memory (``None`` when loaded with an ANN index or
            memory-mapped: ``load(folder, embeddings=True)`` reads them).
        latitude, longitude: (N,) degrees; cell: (N,) the primary head's class of each row.
        info: what it was built with (:class:`IndexInfo`); params: :class:`RetrievalParams`.
        ann: the ANN index when ``info.search`` is an ANN backend.
        vectors: the embeddings memory-mapped from the gallery's shards (searched when ``embeddings`` is
            ``None``, and ranking an ANN index's candidates).
    """

    embeddings: torch.Tensor | None
    latitude: np.ndarray
    longitude: np.ndarray
    cell: np.ndarray
    info: IndexInfo
    params: RetrievalParams = field(default_factory=RetrievalParams)
    ann: AnnIndex | None = None
    vectors: GalleryVectors | None = None
    staged: Path | None = field(default=None, compare=False, repr=False)
    """The temporary folder holding this index's files as :func:`build_index` wrote them, until :meth:`save`."""

    def __len__(self) -> int:
        return int(self.latitude.shape[0])

    # ------------------------------------------------------------------ search
    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(similarities, indices)`` (Q, k) of the nearest gallery rows (-1: none) to normalised queries."""
        queries = normalise(torch.as_tensor(np.asarray(queries)))
        k = min(k, len(self))
        if self.ann is not None:
            sims, found = self.ann.search(queries.numpy(), min(self.ann.candidates(k), len(self)))
            if self.embeddings is None and self.vectors is None:
                return sims[:, :k], found[:, :k]
            return self._rank(queries.numpy(), found, k)
        if self.embeddings is None and self.vectors is None:
            raise ValueError("this index was loaded without its embeddings: load it with embeddings=True")
        if self.embeddings is None:  # memory-mapped: float16 chunks
            s, i = exact_search(self.vectors, queries, k)
            return s.numpy(), i.numpy()
        if getattr(self, "_float32", None) is None:  # a small gallery: float32 once, not per search
            self._float32 = self.embeddings.float()
        s, i = exact_search(self._float32, queries, k)
        return s.numpy(), i.numpy()

    def _rank(self, queries: np.ndarray, found: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best of an ANN index's candidates by their exact similarity to the queries."""
        valid = found >= 0
        rows = np.where(valid, found, 0)
        if self.embeddings is not None:
            vectors = self.embeddings[torch.from_numpy(rows)].float().numpy()
        else:
            vectors = self.vectors.rows(rows)
        sims = np.where(valid, np.einsum("qd,qcd->qc", queries, vectors), -np.inf).astype(np.float32)
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        sims, found = np.take_along_axis(sims, order, 1), np.take_along_axis(found, order, 1)
        found[~np.isfinite(sims)] = -1
        return sims, found

    # ------------------------------------------------------------------ refinement
    def choose(
        self, predictions: GeoPredictions, params: RetrievalParams | None = None, found=None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(latitude, longitude, moved)`` after refinement (see the module docstring); ``found``: a
        precomputed ``search(embeddings, params.neighbours)`` (the tuner reuses one search)."""
        p = params or self.params
        if predictions.embeddings is None or predictions.probs is None or predictions.probs.shape[1] == 0:
            raise ValueError("retrieval refinement needs the primary head's probabilities and the embeddings")
        lat0, lon0 = predictions.pred_latitude, predictions.pred_longitude
        sims, idx = found if found is not None else self.search(predictions.embeddings, p.neighbours)
        sims, idx = sims[:, : p.neighbours], idx[:, : p.neighbours]
        probs = torch.as_tensor(predictions.probs, dtype=torch.float64)
        top_p, top_c = (t.numpy() for t in probs.topk(min(p.top_k, probs.shape[1]), dim=1))
        valid = idx >= 0
        neighbour_cell = np.where(valid, self.cell[np.maximum(idx, 0)], -1)
        match = neighbour_cell[:, :, None] == top_c[:, None, :]  # (Q, M, k)
        masked = np.where(match, sims[:, :, None], -np.inf)
        best = masked.argmax(1)  # (Q, k): the best candidate of each top cell
        best_sim = np.take_along_axis(masked, best[:, None, :], 1)[:, 0]
        rows = np.arange(len(idx))[:, None]
        gallery_row = np.maximum(idx[rows, best], 0)
        cand_lat, cand_lon = self.latitude[gallery_row], self.longitude[gallery_row]
        shift = haversine_km(lat0[:, None], lon0[:, None], cand_lat, cand_lon)
        with np.errstate(divide="ignore"):
            score = np.log(top_p) + best_sim / p.temperature
        allowed = np.isfinite(best_sim) & np.isfinite(score) & (shift <= p.max_shift_km)
        score = np.where(allowed, score, -np.inf)
        pick = score.argmax(1)
        moved = allowed[np.arange(len(pick)), pick]
        lat = np.where(moved, cand_lat[np.arange(len(pick)), pick], lat0)
        lon = np.where(moved, cand_lon[np.arange(len(pick)), pick], lon0)
        return lat.astype(np.float64), lon.astype(np.float64), moved

    def refine(self, predictions: GeoPredictions, params: RetrievalParams | None = None) -> GeoPredictions:
        """``predictions`` with ``pred_latitude``/``pred_longitude`` refined (nothing else changes); it needs
        their ``probs`` and ``embeddings`` (``GeoPredictor`` asks for them when it has an index)."""
        lat, lon, _ = self.choose(predictions, params)
        return replace(predictions, pred_latitude=lat, pred_longitude=lon)

    # ------------------------------------------------------------------ checks
    def check(self, model, where: str = "the index") -> None:
        """Refuse an index built for another model (one line naming both)."""
        info, config = self.info, model.config
        dim = int(config.embed_dim or 0)
        if info.backbone != config.backbone or info.embed_dim != dim:
            raise UserError(
                f"{where}: built for backbone {info.backbone!r} with {info.embed_dim}-d embeddings, but the model is "
                f"{config.backbone!r} with {dim}-d embeddings; rebuild it with geohf index build --model ..."
            )
        if info.fingerprint != model_fingerprint(model):
            raise UserError(
                f"{where}: built for another model's cells (head {info.head!r}, {info.num_classes} classes; the "
                f"model has head {config.head().name!r}, {len(config.head().labels)} classes); rebuild it with "
                "geohf index build"
            )

    # ------------------------------------------------------------------ persistence
    def save(self, model_dir: str | os.PathLike) -> Path:
        """Write ``<model_dir>/index/`` atomically (a temporary folder, then renames): a killed build
        leaves the previous index or none, never a part of one. An index :func:`build_index` staged in
        ``model_dir`` is renamed in; any other is written shard by shard."""
        target = Path(model_dir) / INDEX_FOLDER
        staged, self.staged = self.staged, None
        if staged is not None and staged.parent == target.parent and staged.is_dir():
            tmp = staged
        else:
            if self.embeddings is None and self.vectors is None:
                raise ValueError(
                    "this index was loaded without its embeddings: load it with embeddings=True to save it"
                )
            remove_stale(Path(model_dir))
            tmp = temp_path(target)
        try:
            if tmp is not staged:
                self._write(tmp)
            text = json.dumps({"info": asdict(self.info), "params": asdict(self.params)}, indent=1)
            (tmp / INFO_FILE).write_text(text + "\n", encoding="utf-8")
            with open(tmp / INFO_FILE, "rb") as handle:
                os.fsync(handle.fileno())
            old = temp_path(target) if target.exists() else None
            if old is not None:
                os.replace(target, old)
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except OSError as err:
            if disk_full(err):
                raise UserError(f"{tmp}: no space left on the device; free space and save the index again") from None
            raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return target

    def _write(self, folder: Path) -> None:
        """This index's files into ``folder`` (created): its rows as shards, its ANN index."""
        with GalleryWriter(folder, normalise=False) as writer:
            n = len(self)
            for start in range(0, n, SHARD_ROWS):
                rows = slice(start, min(n, start + SHARD_ROWS))
                if self.embeddings is not None:
                    vectors = self.embeddings[rows].float().numpy()
                else:
                    vectors = self.vectors.rows(np.arange(rows.start, rows.stop))
                writer.add(GalleryBatch(vectors, self.latitude[rows], self.longitude[rows], self.cell[rows]))
            shards = writer.close()
            ann_files = []
            if self.ann is not None:
                name = ANN_FILE.format(self.ann.backend)
                self.ann.save(folder / name)
                ann_files = [name]
            self.info = replace(self.info, size=n, shards=shards, ann_files=ann_files)

    def save_params(self, model_dir: str | os.PathLike) -> None:
        """Rewrite only ``index/index.json`` (after tuning), atomically."""
        from ..files import atomic_write

        text = json.dumps({"info": asdict(self.info), "params": asdict(self.params)}, indent=1) + "\n"
        atomic_write(Path(model_dir) / INDEX_FOLDER / INFO_FILE, text.encode())

    @classmethod
    def load(cls, folder: str | os.PathLike, embeddings: bool | None = None) -> GeoIndex:
        """From an ``index/`` folder (see :func:`find_index` for a model folder or Hub repo). The embeddings
        are read into memory for exact search (``embeddings=None``) or when asked (``True``); otherwise
        (beside an ANN index, or ``embeddings=False``) they are memory-mapped from the gallery's shards."""
        folder = Path(folder)
        info_path = folder / INFO_FILE
        try:
            meta = json.loads(info_path.read_text(encoding="utf-8"))
            info, params = IndexInfo(**meta["info"]), RetrievalParams(**meta["params"])
        except FileNotFoundError:
            raise UserError(f"{info_path}: missing; the index is incomplete, build it again") from None
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"{info_path}: not a geohf index ({one_line(err)}); build it again") from None
        read = info.search not in BACKENDS if embeddings is None else embeddings
        shards, columns = [], {"latitude": [], "longitude": [], "cell": []}
        for name in info.gallery_files():
            path = folder / name
            try:
                entries = read_header(path)
                shape = entries["embeddings"].shape
                for key in columns:
                    columns[key].append(np.array(memmap(path, entries[key])))
                shards.append(memmap(path, entries["embeddings"]))
            except FileNotFoundError:
                raise UserError(f"{path}: missing ({info_path.name} lists it); build the index again") from None
            except (ValueError, KeyError, TypeError, OSError) as err:
                raise UserError(f"{path}: unreadable ({one_line(err)}); build the index again") from None
            if len(shape) != 2 or not all(len(c[-1]) == shape[0] for c in columns.values()):
                raise UserError(f"{path}: arrays of different lengths; build the index again")
            if shape[1] != info.embed_dim:
                raise UserError(
                    f"{path}: {shape[1]}-d embeddings but {info_path.name} says {info.embed_dim}; build the index again"
                )
        lat, lon, cell = (np.concatenate(columns[k]) for k in ("latitude", "longitude", "cell"))
        if info.shards and len(lat) != info.size:
            raise UserError(f"{folder}: {len(lat):,} rows but {info_path.name} says {info.size:,}; build it again")
        vectors = GalleryVectors(shards)
        tensor = torch.from_numpy(np.concatenate(shards)) if read else None
        ann = None
        if info.search in BACKENDS:
            path = folder / info.ann_paths()[0]
            if not path.is_file():
                raise UserError(f"{path}: missing ({info_path.name} says --search {info.search}); build it again")
            ann = AnnIndex.load(info.search, path)
        return cls(tensor, lat, lon, cell, info, params, ann, None if read else vectors)


def remove_stale(model_dir: Path) -> int:
    """Delete temporary index folders a killed build left in ``model_dir``; returns how many."""
    stale = list(model_dir.glob(f".{INDEX_FOLDER}.*{TMP_SUFFIX}")) if model_dir.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return len(stale)


def find_index(source: str | os.PathLike | None, revision: str | None = None) -> Path | None:
    """The ``index/`` folder of a model folder or Hub model repo, or ``None`` when it has none."""
    if not source:
        return None
    local = Path(source) / INDEX_FOLDER
    if Path(source).is_dir():
        return local if (local / INFO_FILE).is_file() else None
    from huggingface_hub import errors, hf_hub_download

    absent = (errors.EntryNotFoundError, errors.LocalEntryNotFoundError, errors.RepositoryNotFoundError,
              errors.HFValidationError, errors.OfflineModeIsEnabled)  # fmt: skip
    try:
        info = Path(hf_hub_download(str(source), f"{INDEX_FOLDER}/{INFO_FILE}", revision=revision))
    except absent:  # no index published with the model (or not a repo id): predictions are not refined
        return None
    try:
        names = IndexInfo(**json.loads(info.read_text(encoding="utf-8"))["info"]).files()
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{source}: its {INDEX_FOLDER}/{INFO_FILE} is not a geohf index ({one_line(err)})") from None
    for name in names:
        hf_hub_download(str(source), f"{INDEX_FOLDER}/{name}", revision=revision)
    return info.parent


def _cell_partition(predictor, has_labels: bool):
    """The partition that assigns the primary head's classes from coordinates, or ``None`` where the labels do;
    refused in one line when neither can (a regression head, or no partition and no labels)."""
    spec = predictor.model.config.head()
    if not spec.is_classifier:
        raise UserError("retrieval refinement needs a classification (geocell) head; this model only regresses")
    partition = predictor.model.cell_partitions.get(spec.partition)
    if spec.is_geocell and partition is not None:
        return partition
    if not has_labels:
        raise UserError(
            f"the dataset has no {spec.label_column!r} column and the model no cell partition: cannot assign cells"
        )
    return None


def batch_cells(predictor, latitude: np.ndarray, longitude: np.ndarray, labels=None) -> np.ndarray:
    """The primary head's class of a batch of gallery rows: the model's own cells at their coordinates (its
    partition), else their ``labels`` (the ``cell_<partition>`` / label column's values) encoded as training does;
    ``labels`` is read only when the model has no partition."""
    from ..data.transforms import label_encoder

    partition = _cell_partition(predictor, labels is not None)
    if partition is not None:
        return np.asarray(partition.assign(latitude, longitude), dtype=np.int64)
    encode = label_encoder(predictor.model.config.head())
    return np.array([encode(v) for v in labels], dtype=np.int64)


def cell_assigner(predictor, dataset=None) -> Callable[[np.ndarray, np.ndarray, slice], np.ndarray]:
    """``cells(latitude, longitude, rows)``: :func:`batch_cells` of gallery rows ``rows`` of ``dataset``; what
    cannot be assigned is refused here, before any row is embedded."""
    column = predictor.model.config.head().label_column
    labels = dataset.select_columns([column]) if dataset is not None and column in dataset.column_names else None
    if _cell_partition(predictor, labels is not None) is not None:
        labels = None  # the coordinates assign the cells: the column is never read

    def cells(latitude: np.ndarray, longitude: np.ndarray, rows: slice) -> np.ndarray:
        return batch_cells(predictor, latitude, longitude, None if labels is None else labels[rows][column])

    return cells


def gallery_cells(predictor, dataset) -> np.ndarray:
    """The primary head's class of every row of ``dataset`` (see :func:`cell_assigner`)."""
    coords = dataset.select_columns(["latitude", "longitude"]).to_pandas()
    lat, lon = coords["latitude"].to_numpy(), coords["longitude"].to_numpy()
    return cell_assigner(predictor, dataset)(lat, lon, slice(0, len(dataset)))


def index_info(model, search: str = "auto", dataset_name: str | None = None, split: str | None = None) -> IndexInfo:
    """What an index of ``model``'s embeddings records (its size and files are filled in by :func:`write_index`)."""
    spec = model.config.head()
    return IndexInfo(
        backbone=model.config.backbone,
        embed_dim=int(model.config.embed_dim or 0),
        fingerprint=model_fingerprint(model),
        head=spec.name,
        num_classes=len(spec.labels),
        size=0,
        search=search,
        dataset=dataset_name,
        split=split,
    )


def write_index(
    batches: Iterable[GalleryBatch],
    info: IndexInfo,
    folder: str | os.PathLike | None = None,
    threads: int = 0,
    shard_rows: int = SHARD_ROWS,
) -> GeoIndex:
    """Stream ``batches`` (from any engine) into a staged index: float16 shards as the rows arrive, then the
    ANN index ``info.search`` asks for (``auto``: see :func:`resolve_search`) built from the shards. The
    files go to a temporary folder beside ``<folder>/index`` (or a temporary directory), which
    :meth:`GeoIndex.save` renames in; an exception, a full disk or a kill leaves no loadable index.
    Memory: one shard, whatever the number of rows (and, for faiss, a training sample and one shard's codes)."""
    if folder is not None:
        remove_stale(Path(folder))
        staging = temp_path(Path(folder) / INDEX_FOLDER)
    else:
        import tempfile

        staging = Path(tempfile.mkdtemp(prefix="geohf-index-")) / INDEX_FOLDER
    try:
        with GalleryWriter(staging, shard_rows) as writer:
            for batch in batches:
                writer.add(batch)
            shards = writer.close()
            kind = resolve_search(info.search, writer.rows)
            info = replace(info, size=writer.rows, embed_dim=writer.dim, search=kind, shards=shards, ann_files=[])
            if kind in BACKENDS:
                vectors = open_vectors(staging, shards)
                name = ANN_FILE.format(kind)
                AnnIndex.build(kind, vectors, threads, path=staging / name)
                info.ann_files = [name]
            text = json.dumps({"info": asdict(info), "params": asdict(RetrievalParams())}, indent=1)
            (staging / INFO_FILE).write_text(text + "\n", encoding="utf-8")
            index = GeoIndex.load(staging, embeddings=kind not in BACKENDS and writer.rows < AUTO_ANN_FROM)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        if disk_full(err):
            raise UserError(f"{staging}: no space left on the device; free space and build the index again") from None
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if folder is None:  # a temporary directory: removed with the index (save() copies it into a model folder)
        weakref.finalize(index, shutil.rmtree, staging.parent, True)
    index.staged = staging
    return index


def build_index(
    predictor,
    dataset,
    search: str = "auto",
    batch_size: int = 64,
    dataset_name: str | None = None,
    split: str | None = None,
    threads: int = 0,
    folder: str | os.PathLike | None = None,
) -> GeoIndex:
    """Embed ``dataset`` (a split with ``latitude``/``longitude``) with the predictor's model: a
    :class:`GeoIndex`, streamed to disk by :func:`write_index` (staged beside ``<folder>/index`` when given;
    :meth:`GeoIndex.save` puts it in place)."""
    if len(dataset) == 0:
        raise UserError(f"the {split or 'dataset'!r} split is empty: nothing to index")
    missing = {"latitude", "longitude"} - set(dataset.column_names)
    if missing:
        raise UserError(f"the {split!r} split has no {' and '.join(sorted(missing))} column: cannot index it")
    groups = predictor.place_groups(dataset)  # a multi-view model indexes places (their fused embeddings)
    places = dataset if groups is None else dataset.select([g[0] for g in groups])
    cells = cell_assigner(predictor, places)

    def batches() -> Iterator[GalleryBatch]:
        start = 0
        for batch in predictor.iter_dataset(dataset, batch_size=batch_size, desc="indexing", embeddings=True):
            rows = slice(start, start + len(batch))
            start = rows.stop
            lat, lon = batch.true_latitude, batch.true_longitude
            yield GalleryBatch(batch.embeddings, lat, lon, cells(lat, lon, rows))

    info = index_info(predictor.model, search, dataset_name, split)
    return write_index(batches(), info, folder, threads)
