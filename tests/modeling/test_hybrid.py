"""The hybrid head (cells + per-cell offsets, OSV-5M) and hierarchical cross-entropy over coarser cells."""

import pytest
import torch

from geohf.modeling import HeadSpec
from geohf.modeling.heads import ClassificationHead, HybridHead

CELLS = {
    "name": ["a", "b", "c"],
    "latitude": [10.0, 50.0, -30.0],
    "longitude": [10.0, 5.0, 140.0],
    "lat_min": [0.0, 40.0, -40.0],
    "lat_max": [20.0, 60.0, -20.0],
    "lon_min": [0.0, 0.0, 130.0],
    "lon_max": [30.0, 10.0, 150.0],
}


def hybrid(**kw) -> HybridHead:
    torch.manual_seed(0)
    return HybridHead(HeadSpec("cells", "hybrid", labels=CELLS["name"], cells=CELLS, **kw), embed_dim=8)


def test_offsets_move_a_cells_guess_inside_its_box_by_hand():
    head = hybrid()
    out = torch.zeros(1, 9)
    out[0, :3] = torch.tensor([0.0, 5.0, 0.0])  # cell b wins
    assert torch.allclose(head.coordinates(out, "argmax"), torch.tensor([[50.0, 5.0]]))  # t = 0: its centroid
    raw = torch.atanh(torch.tensor([0.5, -0.5]) / HybridHead.SCALE)
    out[0, 3 + 2 : 3 + 4] = raw  # cell b's offset: half-way up in latitude, half-way down in longitude
    got = head.coordinates(out, "argmax")[0]
    assert got.tolist() == pytest.approx([50.0 + 0.5 * 10.0, 5.0 - 0.5 * 5.0], abs=1e-4)
    assert head.class_logits(out).shape == (1, 3)


def test_offset_loss_learns_the_true_point_and_requires_no_smoothing():
    head = hybrid()  # no tau_km: plain cross-entropy, as OSV-5M
    assert head.tau_km is None
    x = torch.randn(4, 8)
    labels = torch.tensor([1, 1, 0, -100])  # -100: a row this head has no label for
    true = torch.tensor([[55.0, 2.0], [55.0, 2.0], [12.0, 25.0], [0.0, 0.0]])
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        loss = head.loss(head(x), labels, true)
        loss.backward()
        opt.step()
    got = head.coordinates(head(x[:3]), "argmax")
    assert torch.allclose(got, true[:3], atol=0.5)
    smoothed = hybrid(tau_km=75.0)
    assert torch.isfinite(smoothed.loss(smoothed(x), labels, true))


def test_hierarchy_levels_group_cells_and_add_a_loss():
    spec = HeadSpec("cells", "classification", labels=CELLS["name"], cells=CELLS, hierarchy_levels=2)
    head = ClassificationHead(spec, embed_dim=8)
    # level 1 (2 x 2 boxes): a and b share the north-east box... a is at lon 10 (east), b at lon 5 (east)
    assert head.ancestors.shape == (2, 3)
    assert head.ancestors[0, 0] == head.ancestors[0, 1] != head.ancestors[0, 2]
    logits = torch.tensor([[0.0, 0.0, 0.0]])
    flat = ClassificationHead(HeadSpec("cells", "classification", labels=CELLS["name"], cells=CELLS), embed_dim=8)
    labels = torch.tensor([0])
    extra = head.loss(logits, labels) - flat.loss(logits, labels)
    # level 1: a+b hold 2/3; level 2 (4 x 4): a and b apart, a holds 1/3
    assert extra.item() == pytest.approx(
        -torch.log(torch.tensor(2 / 3)).item() - torch.log(torch.tensor(1 / 3)).item(), abs=1e-5
    )


def test_hybrid_model_trains_saves_and_predicts(tiny_dataset, tmp_path, training_args):
    from datasets import load_dataset

    from geohf import create_model
    from geohf.inference.predictor import GeoPredictor
    from geohf.modeling import GeoModelForImageGeolocation
    from geohf.training import GeoTrainer

    ds = load_dataset(str(tiny_dataset))
    model = create_model(heads=["hybrid"], dataset=ds["train"], pretrained=None, image_size=32, hierarchy_levels=3)
    spec = model.config.head()
    assert spec.type == "hybrid" and all(k in spec.cells for k in ("lat_min", "lon_max"))
    trainer = GeoTrainer(model=model, args=training_args(tmp_path / "run"), train_dataset=ds["train"])
    trainer.train()
    model.save_pretrained(tmp_path / "model")
    again = GeoModelForImageGeolocation.from_pretrained(tmp_path / "model")
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        model = model.to(memory_format=torch.contiguous_format)  # Trainer left it channels_last
        a, b = model.eval()(pixel_values=x), again.eval()(pixel_values=x)
    sa, sb = model.state_dict(), again.state_dict()
    bad = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not bad, bad[:5]
    # the same weights; the trained model's kernels (channels_last, oneDNN) round differently
    assert torch.allclose(a.logits, b.logits, atol=2e-3) and torch.allclose(a.coordinates, b.coordinates, atol=0.2)
    assert a.logits.shape == (2, len(spec.labels))
    pred = GeoPredictor(str(tmp_path / "model")).predict_dataset(ds["test"])
    assert pred.probs.shape[1] == len(spec.labels) and torch.isfinite(torch.as_tensor(pred.pred_latitude)).all()


def test_hybrid_needs_its_cells_extent():
    with pytest.raises(ValueError, match="extents"):
        HeadSpec("cells", "hybrid", labels=["a"], cells={"name": ["a"], "latitude": [0.0], "longitude": [0.0]})


def test_hidden_dims_put_osv5m_s_mlp_before_the_linear_layer():
    head = hybrid(hidden_dims=[16, 8])
    assert [type(m).__name__ for m in head.mlp] == ["LayerNorm", "Linear", "GroupNorm", "GELU", "Linear", "GroupNorm",
                                                    "GELU"]  # fmt: skip
    assert head.fc.in_features == 8 and head.fc.out_features == 9
    x = torch.randn(2, 3, 8)  # views of a place: each view through the MLP alone, as a batch of one image each
    assert torch.allclose(head(x)[:, 1], head(x[:, 1]), atol=1e-6)
    for bad, message in (([6], "divisible by 4"), ([], "divisible by 4")):
        with pytest.raises(ValueError, match=message):
            HeadSpec("cells", "hybrid", labels=CELLS["name"], cells=CELLS, hidden_dims=bad)
    with pytest.raises(ValueError, match="hidden_dims applies to"):
        HeadSpec("coords", "regression", hidden_dims=[8])
