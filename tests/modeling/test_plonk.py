"""The flow head (PLONK) against PLONK's own code (``diff-plonk``, the oracle), and ``geohf convert plonk``.

Tiny random PLONK networks go through PLONK's classes and samplers and through geohf's, from the same noise.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("plonk.models.networks.mlp", reason="PLONK's code: pip install --no-deps diff-plonk==0.4 einops")
from plonk.models.losses import RiemannianFlowMatchingLoss  # noqa: E402
from plonk.models.networks.mlp import GeoAdaLNMLP  # noqa: E402
from plonk.models.preconditioning import DDPMPrecond  # noqa: E402
from plonk.models.samplers.riemannian_flow_sampler import riemannian_flow_sampler  # noqa: E402
from plonk.models.schedulers import SigmoidScheduler  # noqa: E402
from plonk.pipe import PlonkPipeline  # noqa: E402
from plonk.utils.manifolds import Sphere, geodesic  # noqa: E402

from geohf.geo.sphere import latlon_to_xyz, xyz_to_latlon  # noqa: E402
from geohf.modeling.configuration_geohf import HeadSpec  # noqa: E402
from geohf.modeling.converters.plonk import flow_state_dict  # noqa: E402
from geohf.modeling.heads import build_head  # noqa: E402
from geohf.modeling.heads.flow import SigmoidSchedule, geodesic_point_and_velocity  # noqa: E402

SIZES = {"input_dim": 3, "dim": 32, "depth": 2, "expansion": 2, "cond_dim": 16}


def plonk_network(seed: int = 0) -> GeoAdaLNMLP:
    """A tiny PLONK network; its blocks' output layers (zero at PLONK's init) random, its time input small (a
    smooth field, so that the likelihood ODE takes few steps)."""
    torch.manual_seed(seed)
    net = GeoAdaLNMLP(**SIZES)
    for block in net.blocks:
        torch.nn.init.normal_(block.mlp[-1].weight, std=0.1)
        torch.nn.init.normal_(block.mlp[-1].bias, std=0.1)
    torch.nn.init.normal_(net.time_embedder.map_time[0].weight, std=0.005)
    return net.eval()


def flow_head(net: GeoAdaLNMLP, **settings):
    sizes = {k: v for k, v in SIZES.items() if k != "cond_dim"}
    spec = HeadSpec(name="flow", type="flow", flow={**sizes, **settings})
    head = build_head(spec, SIZES["cond_dim"]).eval()
    head.network.load_state_dict(flow_state_dict(net.state_dict(), head.network, "test"), strict=True)
    return head


def oracle_pipeline(net: GeoAdaLNMLP) -> PlonkPipeline:
    """PLONK's pipeline on ``net`` (its __init__ downloads a network and an image tower: set up by hand)."""
    pipe = object.__new__(PlonkPipeline)
    pipe.network, pipe.preconditioning, pipe.manifold = net, DDPMPrecond(), Sphere()
    pipe.scheduler, pipe.device, pipe.input_dim = SigmoidScheduler(-7, 3, 1.0), torch.device("cpu"), 3
    return pipe


@pytest.fixture(scope="module")
def net():
    return plonk_network()


def test_schedule_equals_plonks():
    t = torch.linspace(0, 1, 101)
    ours, theirs = SigmoidSchedule(-7, 3, 1.0), SigmoidScheduler(-7, 3, 1.0)
    assert torch.allclose(ours(t), theirs(t), rtol=0, atol=1e-7)
    assert torch.allclose(ours.derivative(t), theirs.derivative(t), rtol=1e-6, atol=1e-7)


def test_network_equals_plonks(net):
    head = flow_head(net)
    torch.manual_seed(1)
    x, cond = torch.nn.functional.normalize(torch.randn(7, 3), dim=-1), torch.randn(7, 16)
    for gamma in (1e-9, 0.3, 1.0):
        g = torch.tensor(gamma)
        theirs = net({"y": x, "gamma": g.expand(7), "emb": cond})
        assert torch.equal(head.network(x, g.reshape(1), cond), theirs)


@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_samples_equal_plonks_sampler(net, guidance):
    head = flow_head(net, steps=60)
    torch.manual_seed(2)
    noise, cond = torch.nn.functional.normalize(torch.randn(9, 3), dim=-1), torch.randn(9, 16)
    with torch.no_grad():
        theirs = riemannian_flow_sampler(
            net,
            {"y": noise.clone(), "emb": cond},
            conditioning_keys="emb",
            scheduler=SigmoidScheduler(-7, 3, 1.0),
            num_steps=60,
            cfg_rate=guidance,
        )
    ours = head.sample(cond, noise, steps=60, guidance=guidance)
    assert (ours - theirs).abs().max() <= 1e-5  # measured: 0.0


def test_log_density_equals_plonks_likelihood(net):
    head = flow_head(net, atol=1e-6, rtol=1e-6)
    torch.manual_seed(3)
    cond = torch.randn(2, 16)
    points = head.sample(cond, torch.nn.functional.normalize(torch.randn(2, 3), dim=-1), steps=40, guidance=0.0)
    lat, lon = xyz_to_latlon(points.double())
    coords = torch.stack([lat, lon], -1).numpy()
    theirs = oracle_pipeline(net).compute_likelihood(
        emb=cond, coordinates=coords, atol=1e-6, rtol=1e-6, normalize_logp=False
    )
    ours = head.log_density(cond, latlon_to_xyz(torch.as_tensor(coords[:, 0]), torch.as_tensor(coords[:, 1])).float())
    # two adaptive solvers at tolerance 1e-6: measured 1e-4 apart (at 1e-8: 8e-7 apart, 60 s longer)
    assert (ours - theirs).abs().max() <= 5e-4
    nll = head.nll(cond, coords[:, 0], coords[:, 1])
    assert torch.allclose(nll, -ours, atol=1e-5)


def test_likelihood_grid(net):
    """The grid holds log_density at its points (rows latitudes, columns longitudes), per steradian: PLONK's
    estimator takes the divergence of the field in R^3, not on the sphere, so exp of it integrates over the sphere
    to about 1, not exactly (0.87 for this network; 1 / 4 pi or 4 pi off would mean other units)."""
    head = flow_head(net)
    cond = torch.randn(16)
    lats, lons, logp = head.likelihood_grid(cond, resolution_deg=30.0)
    assert logp.shape == (7, 13) and np.isfinite(logp).all()
    i, j = 2, 5
    point = latlon_to_xyz(torch.tensor([lats[i]]), torch.tensor([lons[j]])).float()
    # a batch shares its adaptive steps: alone, the point takes others, within the ODE's tolerance (measured 1e-4)
    assert float(head.log_density(cond[None], point)[0]) == pytest.approx(float(logp[i, j]), abs=1e-3)
    _, _, fine = head.likelihood_grid(cond, resolution_deg=10.0)
    step = math.radians(10.0)
    rows = np.exp(fine[:, :-1]).sum(1) * step * np.cos(np.radians(np.arange(-90, 91, 10)))
    assert 0.7 < float(np.trapezoid(rows, dx=step)) < 1.3


def test_geodesic_and_loss_equal_plonks():
    torch.manual_seed(4)
    x0 = torch.nn.functional.normalize(torch.randn(6, 3), dim=-1)
    x1 = torch.nn.functional.normalize(torch.randn(6, 3), dim=-1)
    gamma = torch.rand(6)
    from torch.func import jvp, vmap

    def cond_u(a, b, t):
        return jvp(geodesic(Sphere(), a, b), (t,), (torch.ones_like(t),))

    theirs_x, theirs_u = vmap(cond_u)(x0, x1, gamma[:, None])
    ours_x, ours_u = geodesic_point_and_velocity(x0, x1, gamma)
    assert torch.allclose(ours_x, theirs_x.reshape(6, 3), atol=1e-5)
    assert torch.allclose(ours_u, theirs_u.reshape(6, 3), atol=1e-5)


def test_flow_loss_equals_plonks(net, monkeypatch):
    """The same draws (t, x0, no condition dropped) give PLONK's Riemannian flow-matching loss."""
    head = flow_head(net, cond_drop=0.0)
    torch.manual_seed(5)
    cond = torch.randn(8, 16)
    lat, lon = torch.rand(8) * 160 - 80, torch.rand(8) * 360 - 180
    coords = torch.stack([lat, lon], -1)
    ours = head.flow_loss(cond, coords, generator=torch.Generator().manual_seed(6))
    # our draws, in our order: t (rand), x0 (randn); PLONK draws t from the generator and x0 from the global RNG
    g = torch.Generator().manual_seed(6)
    t = torch.rand(8, generator=g)
    x0 = torch.nn.functional.normalize(torch.randn(8, 3, generator=g), dim=-1)
    monkeypatch.setattr(Sphere, "random_base", lambda self, *a, **k: x0)
    loss = RiemannianFlowMatchingLoss(SigmoidScheduler(-7, 3, 1.0), cond_drop_rate=0.0, conditioning_key="emb")
    batch = {"x_0": latlon_to_xyz(lat.double(), lon.double()).float(), "emb": cond.clone()}
    theirs = loss(DDPMPrecond(), net, batch, generator=torch.Generator().manual_seed(6))
    assert t.shape == (8,)
    print(f"flow loss: geohf {float(ours):.7f}, PLONK {float(theirs):.7f}")
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)


def test_point_radius_and_seeded_noise(net):
    head = flow_head(net, steps=20, samples=8)
    torch.manual_seed(7)
    cond = torch.randn(4, 16)
    with torch.inference_mode():
        out = head(cond)
        again = head(cond[[2, 0]])  # an image's samples follow it into any batch
    assert out.shape == (4, 8, 4) and torch.isnan(out[..., 3]).all()
    assert torch.allclose(again[..., :3], out[[2, 0], :, :3], rtol=0, atol=1e-6)
    coords = head.coordinates(out)
    lat, lon = xyz_to_latlon(out[:, 0, :3])
    assert torch.allclose(coords, torch.stack([lat, lon], -1))
    radius = head.confidence_radius(out, coords, 0.5)
    assert radius.shape == (4,) and (radius > 0).all()
    # views: samples pooled, a padded view's left out
    fused = head.fuse(out.reshape(2, 2, 8, 4), torch.tensor([[True, False], [True, True]]))
    assert fused.shape == (2, 16, 4) and torch.isnan(fused[0, 8:]).all() and torch.isfinite(fused[1, :, :3]).all()
    likeliest = flow_head(net, steps=20, samples=4, point="likeliest")
    with torch.inference_mode():
        out = likeliest(cond[:2])
    assert torch.isfinite(out[..., 3]).all()
    best = out[..., 3].argmax(1)
    lat, lon = xyz_to_latlon(out[torch.arange(2), best, :3])
    assert torch.allclose(likeliest.coordinates(out), torch.stack([lat, lon], -1))


def test_settings_are_checked():
    with pytest.raises(ValueError, match="point"):
        build_head(HeadSpec(name="flow", type="flow", flow={"point": "mean"}), 16)
    with pytest.raises(ValueError, match="not known"):
        build_head(HeadSpec(name="flow", type="flow", flow={"steps": 10, "temperature": 1}), 16)
    with pytest.raises(ValueError, match="conditions"):
        build_head(HeadSpec(name="flow", type="flow", flow={"cond_dim": 8}), 16)


def save_plonk_folder(net: GeoAdaLNMLP, folder):
    """``net`` as PLONK publishes it on the Hub (PyTorchModelHubMixin: config.json + model.safetensors)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(SIZES))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def test_json_round_trip_of_settings():
    spec = HeadSpec(name="flow", type="flow", flow={"samples": 3})
    again = HeadSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again.flow == {"samples": 3} and not again.is_classifier and again.has_coordinates


VISION = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}
VISION |= {"patch_size": 16, "image_size": 32}
TEXT = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
TEXT |= {"vocab_size": 99, "bos_token_id": 0, "eos_token_id": 2}


@pytest.fixture(scope="module")
def street_clip(tmp_path_factory):
    """A tiny random full CLIPModel standing for StreetCLIP (its CLS token is 16-d, PLONK's cond_dim here)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    root = tmp_path_factory.mktemp("plonk-tower") / "streetclip"
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(vision_config=VISION, text_config=TEXT, projection_dim=8)).save_pretrained(root)
    CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def converted(net, street_clip, tmp_path_factory):
    from geohf.cli import main

    root = tmp_path_factory.mktemp("plonk")
    plonk = save_plonk_folder(net, root / "PLONK_tiny")
    out = root / "model"
    argv = ["convert", "plonk", str(out), str(plonk), "--tower", str(street_clip), "--samples", "4", "--steps", "30"]
    assert main(argv) == 0
    return out


def test_converted_model_samples_plonks_points(converted, net, street_clip, tmp_path):
    """The folder's tower gives PLONK's StreetCLIP embedding (the CLS token before the post-layernorm), and
    predict's points are PLONK's sampler's from the same noise."""
    from PIL import Image
    from transformers import CLIPVisionModel, pipeline

    from geohf.inference.predictor import GeoPredictor
    from geohf.modeling import GeoModelForImageGeolocation

    config = json.loads((converted / "config.json").read_text())
    assert config["backbone_kwargs"]["pooling"] == "cls_prenorm" and config["heads"][0]["type"] == "flow"
    model = GeoModelForImageGeolocation.from_pretrained(converted).eval()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(paths[-1])
    predictor = GeoPredictor(model, bf16=False, channels_last=False)
    pixels = predictor.pixel_values([Image.open(p) for p in paths])
    tower = CLIPVisionModel.from_pretrained(street_clip).eval()
    with torch.no_grad():
        emb = tower(pixel_values=pixels).last_hidden_state[:, 0]  # PLONK's StreetClipFeatureExtractor
        ours = model.geo(pixels).embeddings
    assert torch.allclose(ours, emb, atol=1e-5)
    head = model.heads["flow"]
    noise = head.noise(ours, 4).flatten(0, 1)  # each image's 4 samples, as the head batches them
    with torch.no_grad():
        theirs = riemannian_flow_sampler(
            net,
            {"y": noise.clone(), "emb": ours.repeat_interleave(4, dim=0)},
            conditioning_keys="emb",
            scheduler=SigmoidScheduler(-7, 3, 1.0),
            num_steps=30,
            cfg_rate=2.0,
        )
    lat, lon = xyz_to_latlon(theirs.reshape(3, 4, 3)[:, 0].double())  # the point: each image's first sample
    predictions = predictor.predict_images([Image.open(p) for p in paths])
    raw = predictor.predict_tensors(pixels, answer="cell")
    measured = max(np.abs(raw.pred_latitude - lat.numpy()).max(), np.abs(raw.pred_longitude - lon.numpy()).max())
    print(f"max |geohf - PLONK| point: {measured:.1e} degrees")
    assert measured < 1e-4  # degrees
    assert np.isfinite(predictions.radius_km).all() and (predictions.radius_km > 0).all()
    records = predictions.records()
    assert all(r["pred_country_code"] or r["pred_country_code"] == "" for r in records)
    import geohf

    geohf.register()  # pipeline("image-geolocation")
    geo = pipeline("image-geolocation", model=str(converted))
    result = geo(str(paths[0]))
    assert result["pred_latitude"] == pytest.approx(records[0]["pred_latitude"], abs=1e-3)


def test_predict_command_runs_the_converted_folder(converted, tmp_path, cli):
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.fromarray(np.full((32, 32, 3), 120, dtype=np.uint8)).save(image)
    out = tmp_path / "pred.jsonl"
    html = tmp_path / "map.html"
    result = cli("predict", "--model", converted, image, "--output", out, "--map", html, "--map-offline")
    assert result.code == 0, result.err
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert -90 <= record["pred_latitude"] <= 90 and record["radius_km"] > 0
    page = html.read_text()
    assert "log-density" in page and page.count("L.rectangle") > 10  # the likelihood grid, shaded


def test_convert_refuses_what_is_not_plonk(net, street_clip, tmp_path, cli):
    bad = save_plonk_folder(net, tmp_path / "bad")
    (bad / "config.json").write_text(json.dumps({"dim": 32}))
    result = cli("convert", "plonk", tmp_path / "out", bad, "--tower", street_clip)
    assert result.code != 0 and "config.json" in result.err and "cond_dim" in result.err
    assert not (tmp_path / "out").exists()
    wrong = save_plonk_folder(net, tmp_path / "wrong")
    (wrong / "config.json").write_text(json.dumps({**SIZES, "cond_dim": 8}))
    result = cli("convert", "plonk", tmp_path / "out", wrong, "--tower", street_clip)
    assert result.code != 0 and "8-d" in result.err


def test_flow_model_trains_with_geotrainer_saves_and_predicts(tiny_dataset, tmp_path, training_args, cli):
    """A flow head on a frozen timm backbone trains with GeoTrainer (its loss read from the embeddings); the saved
    folder samples the same points as the model in memory."""
    from datasets import load_dataset

    from geohf import create_model
    from geohf.modeling import GeoModelForImageGeolocation
    from geohf.training import GeoTrainer

    ds = load_dataset(str(tiny_dataset))
    spec = HeadSpec(name="flow", type="flow", flow={"dim": 32, "depth": 2, "expansion": 2, "steps": 10, "samples": 3})
    model = create_model(heads=[spec], pretrained=None, image_size=32)
    model.freeze_backbone()  # frozen embeddings: only the flow network learns
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("heads.flow.network.") for n in trainable)
    trainer = GeoTrainer(model=model, args=training_args(tmp_path / "run"), train_dataset=ds["train"])
    result = trainer.train()
    assert np.isfinite(result.training_loss)
    model.save_pretrained(tmp_path / "model")
    again = GeoModelForImageGeolocation.from_pretrained(tmp_path / "model").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        model = model.to(memory_format=torch.contiguous_format).eval()
        emb = model.geo(x).embeddings
        a, b = model.heads["flow"](emb), again.heads["flow"](emb)
    assert torch.allclose(a[..., :3], b[..., :3], atol=1e-5)
    out = again(pixel_values=x)
    assert out.coordinates.shape == (2, 2) and torch.isfinite(out.coordinates).all()
    result = cli("evaluate", "--model", tmp_path / "model", "--dataset", tiny_dataset, "--output", tmp_path / "ev")
    assert result.code == 0, result.err


def test_flow_loss_falls_on_frozen_embeddings(net):
    """Adam on the flow-matching loss of fixed embeddings and places: the loss (fixed draws) falls."""
    head = flow_head(net, cond_drop=0.1).train()
    torch.manual_seed(8)
    emb = torch.randn(64, 16)
    coords = torch.stack([torch.rand(64) * 40 + 10, torch.rand(64) * 40 - 20], -1)

    def measured() -> float:
        with torch.no_grad():
            return float(head.flow_loss(emb, coords, generator=torch.Generator().manual_seed(0)))

    before = measured()
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        head.flow_loss(emb, coords).backward()
        opt.step()
    assert measured() < 0.7 * before


def test_training_flag_sets_the_flow_heads_settings(tiny_dataset):
    """``--flow`` (ModelArguments.flow): a JSON of FlowSettings for the flow head of ``--heads``; bad values, or
    settings without a flow head, are one clear error."""
    from datasets import load_dataset

    from geohf.errors import UserError
    from geohf.training.train import DataArguments, ModelArguments, build_or_load_model

    train = load_dataset(str(tiny_dataset))["train"]
    data = DataArguments(dataset=str(tiny_dataset))

    def build(heads: str, flow: str | None):
        args = ModelArguments(heads=heads, flow=flow, pretrained="none", image_size="32", crop_pct=1.0)
        return build_or_load_model(args, data, train, 64)

    model = build("flow", '{"dim": 32, "depth": 2, "steps": 7}')
    head = model.heads["flow"]
    assert (head.settings.dim, head.settings.depth, head.settings.steps) == (32, 2, 7)
    assert len(head.network.blocks) == 2 and model.config.head("flow").flow["steps"] == 7
    assert build("flow", None).heads["flow"].settings.depth == 12  # PLONK's by default
    for heads, flow, says in [
        ("flow", '{"temperature": 1}', "temperature"),
        ("flow", "{dim: 32}", "JSON"),
        ("haversine", '{"dim": 32}', "add flow to --heads"),
    ]:
        with pytest.raises(UserError, match=says):
            build(heads, flow)
