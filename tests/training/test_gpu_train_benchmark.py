"""``benchmarks/gpu_train.py``: its CLIP ViT-L/14-336 fine-tuning-mode code path, run on CPU with a tiny tower
(``--tiny``), and its exit without CUDA."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import gpu_train  # noqa: E402


def test_tiny_run_covers_every_clip_mode(tmp_path):
    results = gpu_train.main(["--tiny", "--steps", "1", "--warmup", "0", "--output", str(tmp_path)])
    rows = {r["mode"]: r for k, r in results.items() if k.startswith("tiny CLIP")}
    assert set(rows) == set(gpu_train.CLIP_MODES)
    trained = {mode: r["trainable_params"] for mode, r in rows.items()}
    assert trained["frozen"] < trained["last block"] < trained["full"] == rows["full"]["total_params"]
    assert trained["full + activation checkpointing"] == trained["full"]
    assert rows["LoRA r=16"]["total_params"] > trained["full"] > trained["LoRA r=16"]  # adapters added, tower frozen
    assert all(r["img_s"] > 0 and r["step_gflops"] > 0 for r in rows.values())
    assert (tmp_path / "gpu_tiny.json").is_file()


def test_without_cuda_it_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_train.main(["--output", str(tmp_path)]) == {}
    assert "no CUDA device" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())
