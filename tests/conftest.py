"""Shared fixtures: real boundaries, a tiny Blue Marble dataset and a model trained for 2 steps."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_ADMIN1 = REPO.parent / "shared" / "data" / "naturalearth" / "ne_10m_admin_1_states_provinces.parquet"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def admin1_path() -> str:
    """Natural Earth 10m admin-1 from ../shared (CI has it beside the clone)."""
    path = os.environ.get("GEOHF_BOUNDARIES", str(SHARED_ADMIN1))
    if not Path(path).is_file():
        pytest.skip(f"Natural Earth admin-1 not found at {path}")
    return path


@pytest.fixture(scope="session")
def labeller(admin1_path):
    from geohf.geo.labelling import PointLabeller

    return PointLabeller(admin1_path)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, admin1_path) -> Path:
    """200 Blue Marble tiles (160/20/20) with a small quadtree partition."""
    from geohf.data.bluemarble import TileSpec, build_bluemarble

    out = tmp_path_factory.mktemp("data") / "bluemarble"
    build_bluemarble(
        out,
        {"train": 160, "validation": 20, "test": 20},
        TileSpec(tile_px=32, block_px=64, seed=0),
        cells=["quadtree:max_samples=20,min_samples=4"],
        boundaries=admin1_path,
    )
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_dataset) -> Path:
    """A model folder trained for 2 steps on the tiny dataset (real Trainer path)."""
    from transformers import TrainingArguments

    from geohf.data.transforms import AugmentConfig
    from geohf.training.train import DataArguments, ModelArguments, run_training

    out = tmp_path_factory.mktemp("model") / "model"
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=2,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=1e-3,
        bf16=True,
        use_cpu=True,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
    )
    run_training(ModelArguments(image_size=32), DataArguments(dataset=str(tiny_dataset)), AugmentConfig(), args)
    return out
