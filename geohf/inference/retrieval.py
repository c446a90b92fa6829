"""Retrieval refinement (PIGEON, Haas et al., CVPR 2024): move the guess to a training image that
looks like the query, inside the geocells the head finds most likely.

A :class:`GeoIndex` is the *gallery*: the model's normalised embedding of every training image, its
coordinates and its cell (the primary head's class). ``geohf index build`` writes it into the model
folder (``index/gallery.safetensors`` + ``index/index.json``, and ``index/ann.<backend>`` for an ANN
index); :class:`~geohf.inference.predictor.GeoPredictor` then loads it with the model and refines.

Refinement (:meth:`GeoIndex.refine`), per query:

1. the ``top_k`` cells of the head's probabilities ``p_c``;
2. the ``neighbours`` nearest gallery images by cosine similarity (exact matmul for small galleries,
   an ANN index for large ones, see :func:`resolve_search`); those in the top cells are the candidates;
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..files import TMP_SUFFIX, temp_path
from ..geo.sphere import haversine_km
from .names import BACKENDS, SEARCHES
from .predictions import GeoPredictions

INDEX_FOLDER = "index"
GALLERY_FILE = "gallery.safetensors"
INFO_FILE = "index.json"
# galleries from this size up get an ANN index with ``--search auto`` (benchmarks/retrieval.py, 2 vCPU:
# the exact matmul costs about a forward pass per image at 100k 1280-d embeddings, 18 ms batched and
# ~0.2 s for a single query, against 0.2-0.6 ms for usearch's HNSW at recall@10 >= 0.99; HNSW's build,
# once per model, takes a minute or two at this size)
AUTO_ANN_FROM = 50_000
AUTO_BACKEND = "usearch"


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


def exact_search(gallery: torch.Tensor, queries: torch.Tensor, k: int, chunk: int = 65_536):
    """``(similarities, indices)``, each (Q, k): the ``k`` gallery rows with the largest inner product
    (cosine for normalised rows), a float32 matmul over chunks of the (float16) gallery."""
    queries = queries.float()
    k = min(k, gallery.shape[0])
    best_s = torch.full((queries.shape[0], 0), -torch.inf)
    best_i = torch.zeros((queries.shape[0], 0), dtype=torch.int64)
    for start in range(0, gallery.shape[0], chunk):
        s = queries @ gallery[start : start + chunk].float().T
        s, i = s.topk(min(k, s.shape[1]), dim=1)
        best_s, order = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
        best_i = torch.cat([best_i, i + start], 1).gather(1, order)
    return best_s, best_i


@dataclass
class AnnIndex:
    """An approximate index over normalised embeddings (inner product): faiss-cpu's IVF (inverted lists over
    k-means cells, float16 vectors, ``nprobe`` = a tenth of the lists) or usearch's HNSW graph (float16)."""

    backend: str
    index: object

    @classmethod
    def build(cls, backend: str, embeddings: np.ndarray, threads: int = 0) -> AnnIndex:
        n, dim = embeddings.shape
        if backend == "faiss":  # IVF: a k-means coarse quantiser, float16 vectors in the lists
            faiss = _import("faiss", "faiss-cpu")
            if threads:
                faiss.omp_set_num_threads(threads)
            lists = int(max(1, min(1024, 4 * np.sqrt(n), n // 39)))
            index = faiss.IndexIVFScalarQuantizer(
                faiss.IndexFlatIP(dim), dim, lists, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
            )
            rng = np.random.default_rng(0)
            sample = np.sort(rng.choice(n, size=min(n, 64 * lists), replace=False))
            index.train(np.ascontiguousarray(embeddings[sample], dtype=np.float32))
            for start in range(0, n, 50_000):
                index.add(np.ascontiguousarray(embeddings[start : start + 50_000], dtype=np.float32))
            index.nprobe = min(lists, max(16, lists // 10))
            return cls(backend, index)
        if backend == "usearch":
            usearch = _import("usearch.index", "usearch")
            index = usearch.Index(ndim=dim, metric="ip", dtype="f16", connectivity=16, expansion_add=64)
            index.add(np.arange(n, dtype=np.uint64), np.asarray(embeddings), threads=threads, log=False)
            return cls(backend, index)
        raise UserError(f"--search {backend}: unknown; choose from {', '.join(SEARCHES)}")

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
        if self.backend == "faiss":
            _import("faiss", "faiss-cpu").write_index(self.index, str(path))
        else:
            self.index.save(str(path))

    @classmethod
    def load(cls, backend: str, path: Path) -> AnnIndex:
        if backend == "faiss":
            return cls(backend, _import("faiss", "faiss-cpu").read_index(str(path)))
        return cls(backend, _import("usearch.index", "usearch").Index.restore(str(path)))


def _import(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        how = 'pip install "geohf[retrieval]"' if package == "usearch" else f"pip install {package}"
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
        embeddings: (N, D) float16, L2-normalised (``None`` when loaded with an ANN index, which holds
            its own copy: ``load(folder, embeddings=True)`` reads them too).
        latitude, longitude: (N,) degrees; cell: (N,) the primary head's class of each row.
        info: what it was built with (:class:`IndexInfo`); params: :class:`RetrievalParams`.
        ann: the ANN index when ``info.search`` is an ANN backend.
    """

    embeddings: torch.Tensor | None
    latitude: np.ndarray
    longitude: np.ndarray
    cell: np.ndarray
    info: IndexInfo
    params: RetrievalParams = field(default_factory=RetrievalParams)
    ann: AnnIndex | None = None

    def __len__(self) -> int:
        return int(self.latitude.shape[0])

    # ------------------------------------------------------------------ search
    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(similarities, indices)`` (Q, k) of the nearest gallery rows (-1: none) to normalised queries."""
        queries = normalise(torch.as_tensor(np.asarray(queries)))
        k = min(k, len(self))
        if self.ann is not None:
            return self.ann.search(queries.numpy(), k)
        if self.embeddings is None:
            raise ValueError("this index was loaded without its embeddings: load it with embeddings=True")
        if getattr(self, "_float32", None) is None:  # a small gallery: float32 once, not per search
            self._float32 = self.embeddings.float()
        s, i = exact_search(self._float32, queries, k)
        return s.numpy(), i.numpy()

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
        leaves the previous index or none, never a part of one."""
        from safetensors.torch import save_file

        if self.embeddings is None:
            raise ValueError("this index was loaded without its embeddings: load it with embeddings=True to save it")
        target = Path(model_dir) / INDEX_FOLDER
        remove_stale(Path(model_dir))
        tmp = temp_path(target)
        tmp.mkdir(parents=True)
        try:
            tensors = {
                "embeddings": self.embeddings.to(torch.float16).contiguous(),
                "latitude": torch.from_numpy(np.ascontiguousarray(self.latitude, dtype=np.float64)),
                "longitude": torch.from_numpy(np.ascontiguousarray(self.longitude, dtype=np.float64)),
                "cell": torch.from_numpy(np.ascontiguousarray(self.cell, dtype=np.int64)),
            }
            save_file(tensors, str(tmp / GALLERY_FILE))
            if self.ann is not None:
                self.ann.save(tmp / f"ann.{self.ann.backend}")
            text = json.dumps({"info": asdict(self.info), "params": asdict(self.params)}, indent=1)
            (tmp / INFO_FILE).write_text(text + "\n", encoding="utf-8")
            for f in tmp.iterdir():
                with open(f, "rb") as handle:
                    os.fsync(handle.fileno())
            old = temp_path(target) if target.exists() else None
            if old is not None:
                os.replace(target, old)
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return target

    def save_params(self, model_dir: str | os.PathLike) -> None:
        """Rewrite only ``index/index.json`` (after tuning), atomically."""
        from ..files import atomic_write

        text = json.dumps({"info": asdict(self.info), "params": asdict(self.params)}, indent=1) + "\n"
        atomic_write(Path(model_dir) / INDEX_FOLDER / INFO_FILE, text.encode())

    @classmethod
    def load(cls, folder: str | os.PathLike, embeddings: bool | None = None) -> GeoIndex:
        """From an ``index/`` folder (see :func:`find_index` for a model folder or Hub repo); the embeddings
        are read for exact search (``embeddings=None``) or when asked, not beside an ANN index."""
        from safetensors import SafetensorError, safe_open

        folder = Path(folder)
        info_path = folder / INFO_FILE
        try:
            meta = json.loads(info_path.read_text(encoding="utf-8"))
            info, params = IndexInfo(**meta["info"]), RetrievalParams(**meta["params"])
        except FileNotFoundError:
            raise UserError(f"{info_path}: missing; the index is incomplete, build it again") from None
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"{info_path}: not a geohf index ({_one_line(err)}); build it again") from None
        read = info.search not in BACKENDS if embeddings is None else embeddings
        try:
            with safe_open(str(folder / GALLERY_FILE), framework="pt") as f:
                shape = list(f.get_slice("embeddings").get_shape())
                cell, lat, lon = (f.get_tensor(k).numpy() for k in ("cell", "latitude", "longitude"))
                vectors = f.get_tensor("embeddings") if read else None
        except (FileNotFoundError, SafetensorError, KeyError, OSError) as err:
            raise UserError(f"{folder / GALLERY_FILE}: unreadable ({_one_line(err)}); build the index again") from None
        if len(shape) != 2 or not (len(lat) == len(lon) == len(cell) == shape[0]):
            raise UserError(f"{folder / GALLERY_FILE}: arrays of different lengths; build the index again")
        if shape[1] != info.embed_dim:
            raise UserError(
                f"{folder / GALLERY_FILE}: {shape[1]}-d embeddings but {info_path.name} says "
                f"{info.embed_dim}; build the index again"
            )
        ann = None
        if info.search in BACKENDS:
            path = folder / f"ann.{info.search}"
            if not path.is_file():
                raise UserError(f"{path}: missing ({info_path.name} says --search {info.search}); build it again")
            ann = AnnIndex.load(info.search, path)
        return cls(vectors, lat, lon, cell, info, params, ann)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


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
    meta = json.loads(info.read_text(encoding="utf-8"))
    names = [GALLERY_FILE] + ([f"ann.{meta['info']['search']}"] if meta["info"]["search"] in BACKENDS else [])
    for name in names:
        hf_hub_download(str(source), f"{INDEX_FOLDER}/{name}", revision=revision)
    return info.parent


def gallery_cells(predictor, dataset) -> np.ndarray:
    """The primary head's class of every row: the model's own cells for coordinates (its partition),
    else the dataset's ``cell_<partition>`` / label column."""
    from ..data.transforms import label_encoder

    spec = predictor.model.config.head()
    if not spec.is_classifier:
        raise UserError("retrieval refinement needs a classification (geocell) head; this model only regresses")
    partition = predictor.model.cell_partitions.get(spec.partition)
    if spec.is_geocell and partition is not None:
        coords = dataset.select_columns(["latitude", "longitude"]).to_pandas()
        return np.asarray(partition.assign(coords["latitude"].to_numpy(), coords["longitude"].to_numpy()))
    column = spec.label_column
    if column not in dataset.column_names:
        raise UserError(f"the dataset has no {column!r} column and the model no cell partition: cannot assign cells")
    encode = label_encoder(spec)
    return np.array([encode(v) for v in dataset[column]], dtype=np.int64)


def build_index(
    predictor,
    dataset,
    search: str = "auto",
    batch_size: int = 64,
    dataset_name: str | None = None,
    split: str | None = None,
    threads: int = 0,
) -> GeoIndex:
    """Embed ``dataset`` (a split with ``latitude``/``longitude``) with the predictor's model: a :class:`GeoIndex`."""
    if len(dataset) == 0:
        raise UserError(f"the {split or 'dataset'!r} split is empty: nothing to index")
    missing = {"latitude", "longitude"} - set(dataset.column_names)
    if missing:
        raise UserError(f"the {split!r} split has no {' and '.join(sorted(missing))} column: cannot index it")
    groups = predictor.place_groups(dataset)  # a multi-view model indexes places (their fused embeddings)
    places = dataset if groups is None else dataset.select([g[0] for g in groups])
    cells = gallery_cells(predictor, places)
    kind = resolve_search(search, len(places))
    # streamed: each batch's normalised embeddings go into one float16 array (probabilities are never kept)
    embeddings = latitude = longitude = None
    start = 0
    for batch in predictor.iter_dataset(dataset, batch_size=batch_size, desc="indexing", embeddings=True):
        if embeddings is None:
            embeddings = torch.empty((len(places), batch.embeddings.shape[1]), dtype=torch.float16)
            latitude, longitude = np.empty(len(places)), np.empty(len(places))
        rows = slice(start, start + len(batch))
        embeddings[rows] = normalise(torch.from_numpy(batch.embeddings)).to(torch.float16)
        latitude[rows], longitude[rows] = batch.true_latitude, batch.true_longitude
        start += len(batch)
    model = predictor.model
    spec = model.config.head()
    info = IndexInfo(
        backbone=model.config.backbone,
        embed_dim=int(embeddings.shape[1]),
        fingerprint=model_fingerprint(model),
        head=spec.name,
        num_classes=len(spec.labels),
        size=len(places),
        search=kind,
        dataset=dataset_name,
        split=split,
    )
    ann = AnnIndex.build(kind, embeddings.numpy(), threads) if kind in BACKENDS else None
    return GeoIndex(embeddings, latitude, longitude, cells, info, ann=ann)
