"""Country-only rows (a country, no coordinates): they train the country head and nothing else."""

import io
import math

import numpy as np
import pandas as pd
import pytest
import torch

from geohf.data.samples import crop_around, land_points
from geohf.data.sources import ImportConfig, import_source


@pytest.fixture(scope="module")
def game_dataset(tmp_path_factory, labeller):
    """A game-style table: 24 located rounds (train/validation) and 8 rows with only a country name."""
    root = tmp_path_factory.mktemp("game")
    (root / "img").mkdir()
    rows = []
    for k, p in enumerate(land_points(24, labeller, seed=5).itertuples()):
        buf = io.BytesIO()
        crop_around(p.latitude, p.longitude, (40, 40)).save(buf, format="PNG")
        (root / "img" / f"{k}.png").write_bytes(buf.getvalue())
        split = "validation" if k % 6 == 0 else "train"
        rows.append({"file": f"img/{k}.png", "lat": p.latitude, "lon": p.longitude, "country": "", "split": split})
    for k, name in enumerate(["USA", "Türkiye", "Czechia", "France", "Brazil", "Japan", "India", "Kenya"]):
        buf = io.BytesIO()
        crop_around(10.0 * k - 30, 20.0 * k - 80, (40, 40)).save(buf, format="PNG")
        (root / "img" / f"c{k}.png").write_bytes(buf.getvalue())
        rows.append({"file": f"img/c{k}.png", "lat": "", "lon": "", "country": name, "split": "train"})
    pd.DataFrame(rows).to_csv(root / "rounds.csv", index=False)
    out = root / "dataset"
    cfg = ImportConfig("table", str(root), str(out), table=str(root / "rounds.csv"), image_column="file",
                       latitude_column="lat", longitude_column="lon", country_column="country",
                       split_column="split", cells=["quadtree:max_samples=6,min_samples=2"])  # fmt: skip
    result = import_source(cfg)
    assert result.report.labelling.country_only == 8
    return out


def test_heads_ignore_what_a_row_does_not_have(game_dataset):
    from datasets import load_dataset

    from geohf import create_model
    from geohf.data.transforms import GeoCollator, example_transform

    train = load_dataset(str(game_dataset))["train"]
    model = create_model(heads=["haversine", "country", "regression"], dataset=train, pretrained=None,
                         cells="quadtree:max_samples=6,min_samples=2", image_size=32, crop_pct=1.0)  # fmt: skip
    specs = model.config.head_specs
    country = next(s for s in specs if s.name == "country")
    assert {"US", "TR", "CZ", "JP", "KE"} <= set(country.labels)  # classes known only from country-only rows
    assert all(math.isfinite(v) for v in country.cells["latitude"])  # ... placed inside their country
    transform = example_transform(
        lambda im: torch.zeros(3, 32, 32), specs, model.config.primary_head, partitions=model.cell_partitions
    )
    only = train.filter(lambda r: r["latitude"] is None or np.isnan(r["latitude"]))
    examples = [{k: v[0] for k, v in transform({k: [v] for k, v in r.items()}).items()} for r in only]
    batch = GeoCollator(channels_last=False)(examples)
    assert (batch["labels"] == -100).all()  # no cell for a row without coordinates
    assert (batch["labels_country"] >= 0).all()
    assert torch.isnan(batch["coordinates"]).all()
    model.train()
    out = model(**batch)
    assert torch.isfinite(out.loss)  # only the country head learns from these rows
    out.loss.backward()
    country_head = model.heads["country"]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in country_head.parameters())
    cell_head = model.heads[model.config.primary_head]
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in cell_head.parameters())


def test_training_runs_on_a_mix(game_dataset, tmp_path, training_args):
    from geohf.data.transforms import AugmentConfig
    from geohf.training.train import DataArguments, ModelArguments, run_training

    result = run_training(
        ModelArguments(
            heads="haversine,country,regression", cells="quadtree", image_size=32, crop_pct=1.0, pretrained="none"
        ),  # fmt: skip
        DataArguments(dataset=str(game_dataset)),
        AugmentConfig(),
        training_args(tmp_path / "m", max_steps=3, per_device_train_batch_size=16),
    )
    losses = [h["loss"] for h in result.trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert (tmp_path / "m" / "config.json").is_file()
