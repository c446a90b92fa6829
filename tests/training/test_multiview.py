"""Multi-view training: places grouped by location_id, fusion (mean of logits, attention) trained end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def views_dataset(tmp_path_factory, admin1_path) -> Path:
    """Blue Marble places of 3 views each (40 / 8 / 8 places), 32-px tiles 16 px around each place."""
    from geohf.data.bluemarble import TileSpec, build_bluemarble

    out = tmp_path_factory.mktemp("views") / "bluemarble3"
    build_bluemarble(
        out,
        {"train": 40, "validation": 8, "test": 8},
        TileSpec(tile_px=32, block_px=128, seed=0, views=3, view_offset_px=16),
        cells=["quadtree:max_samples=30,min_samples=6"],
        boundaries=admin1_path,
    )
    return out


@pytest.fixture(scope="module")
def attention_model(tmp_path_factory, views_dataset, training_args):
    """A model trained 4 steps on places of 3 views with attention fusion; (model dir, train result)."""
    from geohf.data.transforms import AugmentConfig
    from geohf.training.train import DataArguments, ModelArguments, run_training

    out = tmp_path_factory.mktemp("mv") / "attention"
    args = training_args(out, max_steps=4, learning_rate=5e-2, per_device_train_batch_size=4)
    model_args = ModelArguments(image_size=32, crop_pct=1.0, fusion="attention", views=3)
    result = run_training(model_args, DataArguments(dataset=str(views_dataset)), AugmentConfig(hflip=0.5), args)
    return out, result


def test_bluemarble_views_share_a_place(views_dataset):
    from datasets import load_dataset

    from geohf.geo.sphere import haversine_km

    ds = load_dataset(str(views_dataset))
    for split, places in (("train", 40), ("validation", 8), ("test", 8)):
        frame = ds[split].select_columns(["location_id", "view", "latitude", "longitude", "tile_x", "tile_y"])
        frame = frame.to_pandas()
        assert len(frame) == 3 * places and frame["location_id"].nunique() == places
        for _, g in frame.groupby("location_id"):
            assert sorted(g["view"]) == [0, 1, 2]
            assert g["latitude"].nunique() == 1 and g["longitude"].nunique() == 1  # the place's centre
            assert len(set(zip(g["tile_x"], g["tile_y"]))) == 3  # three different tiles
    # 16 px at 15 px/degree from the centre: the views' own centres lie around the place
    row = ds["test"][0]
    lat_c = 90 - (row["tile_y"] + 16) * 180 / 2700
    lon_c = -180 + (row["tile_x"] + 16) * 360 / 5400
    assert 0 < haversine_km(row["latitude"], row["longitude"], lat_c, lon_c) < 250
    ids = {s: set(ds[s]["location_id"]) for s in ds}
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["validation"]


class _Rows(torch.utils.data.Dataset):
    """Transformed rows: view i of the split is an image filled with i (``sizes`` overrides a row's side)."""

    def __init__(self, n: int, sizes: dict[int, int] | None = None):
        self.n, self.sizes = n, sizes or {}

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        side = self.sizes.get(i, 8)
        pixels = torch.full((3, side, side), float(i)) + torch.rand(1)  # rand: the augmentation's draw
        return {"pixel_values": pixels, "coordinates": [float(i), 0.0], "labels": i}


def test_view_groups_pad_sample_and_first_views():
    from geohf.data.transforms import GeoCollator, ViewGroups, place_groups

    ids = ["a", "a", "a", "a", "b", "c", "c", "", None]
    groups = place_groups(ids)
    assert groups == [[0, 1, 2, 3], [4], [5, 6], [7], [8]]  # rows without an id: places of their own
    ev = ViewGroups(_Rows(9), groups, 3, location_ids=ids)
    assert ev.counts.padded == 4 and ev.counts.extra == 1 and ev.counts.places == 5
    assert ev.chosen(0) == ([0, 1, 2], [True, True, True])  # evaluation: the first 3, always
    assert ev.chosen(1) == ([4, 4, 4], [True, False, False])  # fewer: repeated, the repeats masked
    assert ev.chosen(2) == ([5, 6, 5], [True, True, False])
    item = ev[2]
    assert item["pixel_values"].shape == (3, 3, 8, 8) and item["view_mask"].tolist() == [True, True, False]
    assert item["labels"] == 5 and item["coordinates"] == [5.0, 0.0]  # the place's (first row's) targets
    batch = GeoCollator()([ev[0], ev[1]])
    assert batch["pixel_values"].shape == (2, 3, 3, 8, 8) and batch["view_mask"].dtype == torch.bool
    assert batch["labels"].tolist() == [0, 4]

    tr = ViewGroups(_Rows(9), groups, 3, seed=7, location_ids=ids)
    draws = set()
    for epoch in range(8):
        tr.set_epoch(epoch)
        rows, mask = tr.chosen(0)
        assert len(set(rows)) == 3 and all(mask) and rows == tr.chosen(0)[0]  # distinct, same within an epoch
        draws.add(tuple(rows))
        a, b = tr[0]["pixel_values"], tr[0]["pixel_values"]
        assert torch.equal(a, b)  # augmentations reproducible from (seed, epoch, place)
        assert len({round(float(v[0, 0, 0]) % 1, 6) for v in a}) == 3  # each view its own draw
    assert len(draws) > 1  # places with more views: other views in other epochs


def test_views_of_unequal_size_name_the_place():
    from geohf.data.transforms import ViewGroups, place_groups

    ids = ["x", "x", "bad place", "bad place"]
    groups = ViewGroups(_Rows(4, sizes={3: 12}), place_groups(ids), 2, location_ids=ids)
    groups[0]
    with pytest.raises(ValueError, match=r"place 'bad place': views of unequal size \[\(3, 8, 8\), \(3, 12, 12\)\]"):
        groups[1]


def test_masked_fusion_mean_and_attention(tiny_model_dir):
    from geohf.modeling import GeoModelForImageGeolocation

    model = GeoModelForImageGeolocation.from_pretrained(tiny_model_dir).eval()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 3, 32, 32)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    with torch.no_grad():
        per_view = model(pixel_values=x.flatten(0, 1)).logits.unflatten(0, (2, 3))
        fused = model(pixel_values=x, view_mask=mask).logits
        torch.testing.assert_close(fused[0], per_view[0].mean(0))  # mean fusion = mean of per-view logits
        torch.testing.assert_close(fused[1], per_view[1, :2].mean(0))  # the padded view is not counted
        y = x.clone()
        y[1, 2] = torch.randn(3, 32, 32)  # whatever the padded slot holds
        torch.testing.assert_close(model(pixel_values=y, view_mask=mask).logits, fused)
        # a place given only its real views (the pipeline) = the padded, masked place (the eval collator)
        torch.testing.assert_close(model(pixel_values=x[1:, :2]).logits[0], fused[1])
    with pytest.raises(ValueError, match="no real view"):
        model(pixel_values=x, view_mask=torch.tensor([[True, False, False], [False, False, False]]))


def test_attention_fusion_is_trained(attention_model):
    from geohf.data.transforms import GeoCollator

    out, result = attention_model
    model, trainer = result.model, result.trainer
    assert model.config.views == 3 and model.config.fusion == "attention"
    score = model.fusion.score.weight
    assert score.abs().sum() > 0  # zero-initialised: the attention itself was trained
    # gradients flow into the attention scores from a batch of places
    batch = GeoCollator(channels_last=False)([trainer.train_dataset[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 3, 32, 32)
    model.train().zero_grad()
    model(**batch).loss.backward()
    assert model.fusion.score.weight.grad.abs().sum() > 0
    with torch.no_grad():  # views now get unequal weights
        emb = model.geo(batch["pixel_values"]).embeddings
        weights = torch.softmax(model.fusion.score(emb).float(), 1)
    assert (weights - 1 / 3).abs().max() > 1e-4
    saved = model.config.to_dict()
    assert saved["views"] == 3


def test_evaluation_and_pipeline_group_places_alike(attention_model, views_dataset):
    from datasets import load_dataset
    from transformers import pipeline

    import geohf.inference.pipeline  # noqa: F401  (registers pipeline("image-geolocation"))
    from geohf.evaluation import evaluate
    from geohf.inference.predictor import GeoPredictor

    out, _ = attention_model
    ds = load_dataset(str(views_dataset))
    predictor = GeoPredictor(str(out), bf16=False)
    preds = predictor.predict_dataset(ds["test"])  # the eval collation: ViewGroups, first 3 views
    assert preds.probs.shape[0] == 8  # one prediction per place, not per image
    test = ds["test"]
    rows = [i for i, loc in enumerate(test["location_id"]) if loc == test[0]["location_id"]]
    images = [test[i]["image"] for i in rows]
    direct = predictor.predict_images([images])  # (1, 3 views, 3, S, S)
    np.testing.assert_allclose(direct.probs[0], preds.probs[0], atol=1e-5)
    geo = pipeline("image-geolocation", model=str(out), bf16=False)
    place = geo([images], top_k=3)[0]
    assert abs(place["pred_latitude"] - preds.pred_latitude[0]) < 1e-2  # the pipeline fuses the same views
    result = evaluate(predictor, ds, split="test")
    assert result.sizes["test places"] == 8 and len(result.truth) == 8
    assert result.truth["location_id"].nunique() == 8


def test_views_need_location_ids():
    from datasets import Dataset

    from geohf.data.transforms import location_groups
    from geohf.errors import UserError

    with pytest.raises(UserError, match="the training split has no location_id column.*--views 1"):
        location_groups(Dataset.from_dict({"latitude": [1.0]}), "the training split")
    assert location_groups(Dataset.from_dict({"location_id": ["p", "q", "p"]})) == [[0, 2], [1]]
