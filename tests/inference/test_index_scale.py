"""Indexes for millions of rows: the gallery streamed to float16 shards, a faiss IVF index written shard by
shard and memory-mapped, the embeddings stored once; kill -9 and a full disk leave no loadable index and a
rerun equals an uninterrupted run; indexes written before shards still load."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from geohf.errors import UserError
from geohf.inference import gallery
from geohf.inference.gallery import GalleryBatch, GalleryWriter, normalise_rows
from geohf.inference.retrieval import (
    INFO_FILE,
    AnnIndex,
    GeoIndex,
    IndexInfo,
    RetrievalParams,
    exact_search,
    find_index,
    write_index,
)


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Rows around 50 centres in an 8-d space mapped to ``dim`` (learned embeddings cluster, with a low
    intrinsic dimension), plus a little noise; not normalised."""
    base = np.random.default_rng(0)
    centres, to_dim = base.standard_normal((50, 8)), base.standard_normal((8, dim))
    rng = np.random.default_rng(seed)
    latent = centres[rng.integers(0, 50, n)] + 0.5 * rng.standard_normal((n, 8))
    return (latent @ to_dim + 0.1 * rng.standard_normal((n, dim))).astype(np.float32)


def rows(n: int, dim: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 100)
    return clustered(n, dim, seed), rng.uniform(-90, 90, n), rng.uniform(-180, 180, n), rng.integers(0, 40, n)


def batches(data, size: int = 700, pause: float = 0.0):
    x, lat, lon, cell = data
    for s in range(0, len(x), size):
        if pause:
            time.sleep(pause)
        yield GalleryBatch(x[s : s + size], lat[s : s + size], lon[s : s + size], cell[s : s + size])


def info(dim: int, search: str) -> IndexInfo:
    return IndexInfo("synthetic", dim, "0" * 16, "haversine", 40, 0, search)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}


def test_the_gallery_streams_to_shards_and_the_ivf_index_is_memory_mapped(tmp_path):
    import faiss

    data = rows(12_000, 64)
    index = write_index(batches(data), info(64, "faiss"), tmp_path, threads=1, shard_rows=5_000)
    staged = index.staged
    assert staged.parent == tmp_path and staged.name.startswith(".index.") and not (tmp_path / "index").exists()
    assert index.info.shards == [f"gallery-0000{i}.safetensors" for i in range(3)] and index.info.size == 12_000
    assert index.info.ann_files == ["ann.faiss"] and index.embeddings is None  # memory-mapped, not read
    # the rows, in order, across shard boundaries that no batch lines up with
    vectors = normalise_rows(data[0]).astype(np.float16)
    assert np.array_equal(index.vectors.rows(np.arange(12_000)), vectors.astype(np.float32))
    assert np.array_equal(index.latitude, data[1]) and np.array_equal(index.cell, data[3])
    # written shard by shard, the index is byte for byte what faiss writes for one built in memory
    in_memory = AnnIndex.build("faiss", vectors, threads=1)
    assert faiss.serialize_index(in_memory.index).tobytes() == (staged / "ann.faiss").read_bytes()
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index.ann.index).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists)  # the inverted lists stay on disk
    # stored once: per row the ANN index holds 8 bytes of product-quantised code at 64-d (and an 8-byte id),
    # beside a fixed part (the quantisers and list sizes); the gallery holds 128 bytes of float16
    empty = faiss.clone_index(in_memory.index)
    empty.reset()
    fixed = len(faiss.serialize_index(empty).tobytes()) + 8 * empty.nlist
    assert in_memory.index.code_size == 8 and (staged / "ann.faiss").stat().st_size == fixed + 12_000 * (8 + 8)
    # found by codes, ranked by the float16 gallery: the similarities are the exact ones
    queries = normalise_rows(clustered(64, 64, seed=2))
    sims, found = index.search(queries, 10)
    truth_s, truth = exact_search(torch.from_numpy(vectors), torch.from_numpy(queries), 10)
    assert recall(found, truth.numpy()) >= 0.9
    exact = np.einsum("qd,qkd->qk", queries, vectors[found].astype(np.float32))
    assert np.allclose(sims, exact, atol=1e-5) and (np.diff(sims, axis=1) <= 1e-6).all()
    saved = index.save(tmp_path)  # renamed in, nothing copied
    assert saved == tmp_path / "index" and not list(tmp_path.glob(".index*")) and index.staged is None
    loaded = GeoIndex.load(saved)
    assert np.array_equal(loaded.search(queries, 10)[1], found) and len(loaded) == 12_000
    assert GeoIndex.load(saved, embeddings=True).embeddings.shape == (12_000, 64)


def test_exact_search_over_memory_mapped_shards_equals_search_in_memory(tmp_path):
    data = rows(2_500, 32)
    index = write_index(batches(data, 300), info(32, "exact"), tmp_path, shard_rows=1_000).save(tmp_path)
    mapped, in_memory = GeoIndex.load(index, embeddings=False), GeoIndex.load(index)
    assert mapped.embeddings is None and in_memory.embeddings is not None and len(mapped.vectors.shards) == 3
    queries = clustered(16, 32, seed=3)
    a, b = mapped.search(queries, 7), in_memory.search(queries, 7)
    assert np.array_equal(a[1], b[1]) and np.allclose(a[0], b[0], atol=1e-6)


def test_a_full_disk_leaves_the_previous_index_and_a_rerun_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    data = rows(3_000, 32)
    reference = tmp_path / "reference"
    write_index(batches(data), info(32, "faiss"), reference, threads=1, shard_rows=1_000).save(reference)
    model = tmp_path / "model"
    write_index(batches(rows(500, 32, seed=7)), info(32, "exact"), model).save(model)  # a previous index
    before = files(model / "index")
    real, calls = gallery.write_shard, []

    def full_at_second_shard(path, tensors):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, tensors)

    monkeypatch.setattr(gallery, "write_shard", full_at_second_shard)
    with pytest.raises(UserError) as err:
        write_index(batches(data), info(32, "faiss"), model, threads=1, shard_rows=1_000)
    assert "no space left on the device" in str(err.value) and "\n" not in str(err.value)
    assert files(model / "index") == before and not list(model.glob(".index*"))  # nothing half-written stays
    monkeypatch.setattr(gallery, "write_shard", real)
    write_index(batches(data), info(32, "faiss"), model, threads=1, shard_rows=1_000).save(model)
    assert files(model / "index") == files(reference / "index")


KILLABLE = """
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
from test_index_scale import batches, info, rows
from geohf.inference.retrieval import write_index
folder, pause = sys.argv[2], float(sys.argv[3])
write_index(batches(rows(3_000, 32), pause=pause), info(32, "faiss"), folder, threads=1, shard_rows=1_000).save(folder)
"""


def test_kill_9_mid_build_leaves_no_loadable_index_and_a_rerun_equals_an_uninterrupted_run(tmp_path):
    script = tmp_path / "build.py"
    script.write_text(KILLABLE)

    def build(folder: Path, pause: float) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(script), str(Path(__file__).parent), str(folder), str(pause)],
                                stderr=subprocess.PIPE, text=True)  # fmt: skip

    reference = tmp_path / "reference"
    assert build(reference, 0.0).wait(timeout=300) == 0
    model = tmp_path / "model"
    model.mkdir()
    proc = build(model, 0.3)  # slow batches: killed while it writes shards
    deadline = time.monotonic() + 120
    while not any(len(list(p.glob("gallery-*"))) >= 2 for p in model.glob(".index.*")):
        assert proc.poll() is None and time.monotonic() < deadline, "the build ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    staged = list(model.glob(".index.*"))
    assert len(staged) == 1 and not (model / "index").exists() and find_index(model) is None
    with pytest.raises(UserError, match="missing; the index is incomplete"):
        GeoIndex.load(staged[0])  # what was staged never loads
    rerun = build(model, 0.0)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()[-2000:]
    assert not list(model.glob(".index*"))  # the killed build's staging is gone
    assert files(model / "index") == files(reference / "index")


SELF_KILL_AT_SHARD = """
import os, runpy, signal, sys
from geohf.inference import gallery
def write_shard(path, tensors):
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 mid-build: the first shard being written
gallery.write_shard = write_shard
sys.argv = ["geohf", *sys.argv[1:]]
runpy.run_module("geohf.cli", run_name="__main__")
"""


def test_kill_9_in_geohf_index_build(tiny_model_dir, tiny_dataset, tmp_path):
    script = tmp_path / "kill_at_shard.py"
    script.write_text(SELF_KILL_AT_SHARD)
    argv = ["index", "build", "--dataset", str(tiny_dataset), "--tune-split", "none", "--search", "faiss"]
    reference, model = tmp_path / "reference", tmp_path / "model"
    for folder in (reference, model):
        shutil.copytree(tiny_model_dir, folder)
    run = [sys.executable, "-m", "geohf.cli", *argv, "--model", str(reference)]
    assert subprocess.run(run, capture_output=True, text=True, timeout=300).returncode == 0
    killed = subprocess.run([sys.executable, str(script), *argv, "--model", str(model)], capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (model / "index").exists() and find_index(model) is None and list(model.glob(".index.*"))
    run[-1] = str(model)
    rerun = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert not list(model.glob(".index*"))
    new, old = GeoIndex.load(model / "index", embeddings=True), GeoIndex.load(reference / "index", embeddings=True)
    assert new.info == old.info and len(new) == 160
    assert torch.equal(new.embeddings, old.embeddings) and np.array_equal(new.cell, old.cell)
    assert files(model / "index") == files(reference / "index")


def test_an_index_written_before_shards_still_loads(tmp_path):
    """``gallery.safetensors`` beside ``ann.faiss`` (an IVF of float16 vectors in memory) or alone: as
    ``geohf index build`` wrote them before shards."""
    import faiss
    from safetensors.torch import save_file

    x, lat, lon, cell = rows(2_000, 32)
    vectors = normalise_rows(x).astype(np.float16)
    queries = normalise_rows(clustered(8, 32, seed=4))
    truth = exact_search(torch.from_numpy(vectors), torch.from_numpy(queries), 5)[1].numpy()
    for search in ("exact", "faiss"):
        folder = tmp_path / search / "index"
        folder.mkdir(parents=True)
        save_file({"embeddings": torch.from_numpy(vectors), "latitude": torch.from_numpy(lat),
                   "longitude": torch.from_numpy(lon), "cell": torch.from_numpy(cell)},
                  str(folder / "gallery.safetensors"))  # fmt: skip
        old = {k: v for k, v in info(32, search).__dict__.items() if k not in ("shards", "ann_files")}
        old["size"] = 2_000
        (folder / INFO_FILE).write_text(json.dumps({"info": old, "params": RetrievalParams().__dict__}))
        if search == "faiss":
            ivf = faiss.IndexIVFScalarQuantizer(
                faiss.IndexFlatIP(32), 32, 16, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
            )
            ivf.train(vectors.astype(np.float32))
            ivf.add(vectors.astype(np.float32))
            ivf.nprobe = 16
            faiss.write_index(ivf, str(folder / "ann.faiss"))
        index = GeoIndex.load(folder)
        assert (
            len(index) == 2_000
            and np.array_equal(index.latitude, lat)
            and index.info.gallery_files() == ["gallery.safetensors"]
        )
        assert np.array_equal(index.search(queries, 5)[1], truth), search
        assert find_index(folder.parent) == folder
    (folder / "gallery.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(UserError, match=r"gallery.safetensors: unreadable .*build the index again"):
        GeoIndex.load(folder)


def test_a_missing_shard_is_one_line(tmp_path):
    index = write_index(batches(rows(2_000, 16)), info(16, "exact"), tmp_path, shard_rows=1_000).save(tmp_path)
    (index / "gallery-00001.safetensors").unlink()
    with pytest.raises(UserError) as err:
        GeoIndex.load(index)
    assert "gallery-00001.safetensors: missing (index.json lists it); build the index again" in str(err.value)


def test_the_writer_takes_batches_from_any_engine(tmp_path):
    """The writer alone: any iterator of batches (Ray's, say) in row order; an exception removes its folder."""
    x, lat, lon, cell = rows(1_050, 8)
    with GalleryWriter(tmp_path / "g", shard_rows=500) as writer:
        for s in range(0, 1_050, 333):
            writer.add(GalleryBatch(x[s : s + 333], lat[s : s + 333], lon[s : s + 333], cell[s : s + 333]))
        assert writer.close() == [f"gallery-0000{i}.safetensors" for i in range(3)] and writer.rows == 1_050
    wrong = pytest.raises(ValueError, match="16-d embeddings in a 8-d gallery")
    with wrong, GalleryWriter(tmp_path / "h", shard_rows=500) as broken:
        broken.add(GalleryBatch(x, lat, lon, cell))
        broken.add(GalleryBatch(np.zeros((2, 16)), lat[:2], lon[:2], cell[:2]))
    assert not (tmp_path / "h").exists()
    with pytest.raises(UserError, match="nothing to index"):
        write_index(iter([]), info(8, "auto"), tmp_path / "empty")
    assert not list((tmp_path / "empty").glob(".index*"))
