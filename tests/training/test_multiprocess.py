"""Training past one process: ``accelerate launch --multi_gpu --num_processes 2`` on CPU (gloo) against one
process with the same global batch, resume of a 2-process run, streams split across ranks, gathered evaluation.

Each run is ``tests/training/multiproc_run.py`` (``run_training``, as ``scripts/train.py``) on the tiny dataset
with a tiny timm ViT (no BatchNorm, no dropout, no augmentation), float32, seed 3, 6 steps, AdamW at 1e-3.

Also one process with batches of 8 and 2 gradient accumulation steps.

Why the runs must agree: Trainer's sampler draws one permutation of the 160 training rows (seeded the same
whatever the process count), cut into per-device batches of 8; accelerate gives batch 2k to rank 0 and 2k+1 to
rank 1, so global step k trains on the same 16 rows as one process with batches of 16 (rows 16k..16k+15 of the
permutation). DDP averages the two ranks' mean-loss gradients, which is the gradient of the mean over the 16
rows, and the logged loss is the mean of the ranks' losses, the loss over the 16 rows. Only the order of the
float32 sums differs (two halves then an all-reduce, against one sum of 16): about 1e-7 relative per step.
Tolerances: losses to 1e-5 relative, weights to 1e-5 absolute: ~80 times what we measure (3e-7, 1.2e-7) and
~100 times less than what the last 3 AdamW steps move the weights (1e-3), so a different batch, a sample seen
twice or a lost gradient fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_dataset
from safetensors.torch import load_file

RUN = Path(__file__).with_name("multiproc_run.py")
STEPS = 6


def launch(cfg: dict, processes: int, tmp_path: Path) -> dict:
    """``accelerate launch`` the run on CPU; returns its ``result.json`` with the weights under ``final``."""
    if processes > 1:  # torchrun under accelerate; gloo, as no CUDA is visible (--cpu would start one process)
        where = ["--multi_gpu", "--num_processes", str(processes), "--num_cpu_threads_per_process", "1"]
    else:
        where = ["--cpu", "--num_processes", "1", "--num_cpu_threads_per_process", "2"]
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *where,
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(RUN),
        json.dumps(cfg),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((Path(cfg["out"]) / "result.json").read_text())
    assert result["world_size"] == processes
    result["final"] = torch.load(Path(cfg["out"]) / "final.pt")
    return result


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("multiproc")
    base = {"dataset": str(tiny_dataset), "max_steps": STEPS}
    two = launch({**base, "out": str(root / "two"), "batch_size": 8, "save_steps": 3}, 2, root)
    one = launch({**base, "out": str(root / "one"), "batch_size": 16}, 1, root)
    accumulated = launch({**base, "out": str(root / "accumulated"), "batch_size": 8, "accumulation": 2}, 1, root)
    return {"root": root, "two": two, "one": one, "accumulated": accumulated}


def max_weight_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


@pytest.mark.slow
def test_two_processes_train_as_one_with_the_same_global_batch(runs):
    two, one = runs["two"], runs["one"]
    assert len(two["losses"]) == len(one["losses"]) == STEPS
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    diff = max_weight_difference(two["final"], one["final"])
    halfway = load_file(runs["root"] / "two" / "checkpoint-3" / "model.safetensors")
    moved = max_weight_difference({k: two["final"][k] for k in halfway}, halfway)
    print(
        f"\nlosses 2 processes: {two['losses']}\nlosses 1 process:   {one['losses']}\n"
        f"max |w2 - w1| {diff:.2e} (3 steps move weights by up to {moved:.2e}); img/s 2 processes "
        f"{two['metrics']['train_samples_per_second']}, 1 process {one['metrics']['train_samples_per_second']}"
    )
    assert diff < 1e-5 and moved > 50 * 1e-5  # the tolerance is far below what training moves


@pytest.mark.slow
def test_two_processes_train_as_one_accumulating_their_batches(runs):
    """One process, batches of 8, 2 accumulation steps: the same micro-batches as the two ranks, the gradient
    (g0 + g1) / 2 summed in the same order, so the same floats (we measure 0.0 difference over 30 steps)."""
    two, accumulated = runs["two"], runs["accumulated"]
    np.testing.assert_allclose(two["losses"], accumulated["losses"], rtol=1e-6)
    assert max_weight_difference(two["final"], accumulated["final"]) < 1e-6


@pytest.mark.slow
def test_evaluation_gathers_every_rank_once(runs, tiny_dataset):
    """20 validation rows, eval batches of 8 per rank: accelerate pads rank 0's last batch (4 rows) with rows
    0-3 so both ranks step together; the gathered predictions must drop them."""
    truth = load_dataset(str(tiny_dataset), split="validation")
    expected = np.stack([truth["latitude"], truth["longitude"]], 1)
    two, one = runs["two"]["prediction"], runs["one"]["prediction"]
    assert len(two["coordinates"]) == len(two["true"]) == len(truth) == 20
    np.testing.assert_allclose(two["true"], expected, atol=1e-4)  # each row once, in the split's order
    # the same predictions as one process (its weights differ by ~1e-7: see above)
    np.testing.assert_allclose(two["coordinates"], one["coordinates"], atol=1e-3)
    assert runs["two"]["metrics"]["eval_mean_km"] == pytest.approx(runs["one"]["metrics"]["eval_mean_km"], abs=0.1)
    # the loss of the 20 rows, not of rank 0's last batch padded with rows 0-3 (GeoTrainer.evaluation_loop)
    assert runs["two"]["metrics"]["eval_loss"] == pytest.approx(runs["one"]["metrics"]["eval_loss"], rel=1e-5)


@pytest.mark.slow
def test_resumed_two_process_run_matches_the_uninterrupted_one(runs, tiny_dataset):
    root = runs["root"]
    cfg = {
        "dataset": str(tiny_dataset),
        "max_steps": STEPS,
        "out": str(root / "resumed"),
        "batch_size": 8,
        "resume": str(root / "two" / "checkpoint-3"),
    }
    resumed = launch(cfg, 2, root)
    assert resumed["losses"] == runs["two"]["losses"]  # steps 1-3 from the checkpoint's log, 4-6 trained again
    assert max_weight_difference(resumed["final"], runs["two"]["final"]) == 0.0  # bit for bit


@pytest.mark.slow
def test_stream_is_split_across_ranks(tiny_dataset, tmp_path):
    """``--streaming`` on 2 ranks: each reads its half (``split_dataset_by_node``; the tiny dataset's single
    parquet shard: every other example), and one pass over both ranks' dataloaders is the split, each row once."""
    cfg = {"dataset": str(tiny_dataset), "max_steps": 2, "out": str(tmp_path / "stream"), "batch_size": 8}
    result = launch({**cfg, "streaming": True, "epoch_ids": True}, 2, tmp_path)
    truth = load_dataset(str(tiny_dataset), split="train")
    rows = np.stack([truth["latitude"], truth["longitude"]], 1)

    def row_of(coordinates) -> list[int]:  # the training row each yielded example is (float32 coordinates)
        gaps = np.abs(np.asarray(coordinates, dtype=np.float64)[:, None, :] - rows[None]).max(-1)
        assert (gaps.min(1) < 1e-3).all()
        return gaps.argmin(1).tolist()

    ranks = [row_of(rank) for rank in result["epoch_ids"]]
    # [40, 40] if accelerate re-split the parts or dispatched rank 0's part to both (its default for streams)
    assert [len(r) for r in ranks] == [80, 80]
    seen = ranks[0] + ranks[1]
    assert len(seen) == len(set(seen)) == len(rows) == 160  # each row once
    assert result["node_split"] and len(result["losses"]) == 2


def test_split_stream_by_node_once(tiny_dataset):
    """Rank parts of a stream are disjoint and cover it; a part is not split again; a map-style split (the
    sampler's job) and a one-process run are left as they are."""
    from geohf.training.trainer import is_node_split, split_stream_by_node

    stream = load_dataset(str(tiny_dataset), split="train", streaming=True).shuffle(seed=3, buffer_size=1000)
    parts = [split_stream_by_node(stream, rank, 2) for rank in range(2)]
    assert all(is_node_split(p) for p in parts) and not is_node_split(stream)
    rows = [[(r["latitude"], r["longitude"]) for r in part] for part in parts]
    assert [len(r) for r in rows] == [80, 80] and len(set(rows[0] + rows[1])) == 160
    assert split_stream_by_node(parts[0], 0, 2) is parts[0]
    assert split_stream_by_node(stream, 0, 1) is stream
    table = load_dataset(str(tiny_dataset), split="train")
    assert split_stream_by_node(table, 0, 2) is table


def test_geohf_train_leaves_the_process_group(tiny_dataset, tmp_path, train_argv):
    """``geohf train`` ends by destroying the process group (``accelerator.end_training``): a rank exiting
    inside it could abort on its way out and fail the launch. A one-rank gloo group, as torchrun starts it."""
    import torch.distributed as dist
    from multiproc_run import TINY_VIT  # this folder is on sys.path (pytest's rootdir-relative import)

    from geohf.commands.train import train

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        run = tmp_path / "run"
        backbone = {"backbone": "vit_tiny_patch16_224", "backbone_kwargs": json.dumps(TINY_VIT), "pretrained": "none"}
        train(train_argv(tiny_dataset, run, **backbone, max_steps=1, disable_tqdm=None))
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
