"""The GeoCLIP head: a location encoder over a GPS gallery, trained contrastively with a queue of GPS negatives."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import geohf.inference.pipeline  # noqa: F401  (registers pipeline("image-geolocation"))
from geohf import create_model
from geohf.errors import UserError
from geohf.modeling import GeoImageProcessor, GeoModelForImageGeolocation, HeadSpec
from geohf.modeling.heads import GeoClipHead
from geohf.modeling.location_encoder import geoclip_files


def _model(tiny_dataset, **kw):
    torch.manual_seed(0)
    kw = {"gallery": "train", "queue_size": 24, "image_size": 32, "crop_pct": 1.0} | kw
    return create_model("tf_efficientnet_lite0", heads=["geoclip"], dataset=str(tiny_dataset), **kw)


@pytest.fixture(scope="module")
def model(tiny_dataset):
    return _model(tiny_dataset)


@pytest.fixture(scope="module")
def train(tiny_dataset):
    from geohf.data.folder import load_geo_dataset

    return load_geo_dataset(str(tiny_dataset))["train"]


def test_built_from_the_released_weights_on_the_training_gallery(model, train):
    head = model.heads["geoclip"]
    spec = model.config.head()
    assert isinstance(head, GeoClipHead) and spec.type == "geoclip" and spec.gallery == "train"
    assert model.config.primary_head == "geoclip" and spec.queue_size == 24
    # the gallery: the training coordinates (deduplicated), labelled with countries by the shipped boundaries
    coords = {(round(a, 6), round(b, 6)) for a, b in zip(train["latitude"], train["longitude"])}
    assert len(spec.labels) == len(coords) == head.centroids.shape[0]
    assert {(a, b) for a, b in zip(spec.cells["latitude"], spec.cells["longitude"])} == coords
    assert sum(bool(c) for c in spec.cells["country_code"]) > len(coords) // 2
    files = geoclip_files()
    released = files.load_location_encoder()
    assert all(torch.equal(head.location_encoder.state_dict()[k], v) for k, v in released.items())
    assert head.logit_scale.item() == pytest.approx(files.load_logit_scale().item())
    # a 1280-d EfficientNet embedding: GeoCLIP's image MLP shape, fresh weights (the released one is 768-d)
    assert [tuple(p.shape) for p in head.image_mlp.parameters()] == [(1280, 1280), (1280,), (512, 1280), (512,)]


def test_image_mlp_from_the_release_at_768(model):
    spec = model.config.head()
    head = GeoClipHead(spec, embed_dim=768)
    assert head.load_geoclip(geoclip_files()) == ["location_encoder", "logit_scale", "image_mlp"]
    released = geoclip_files().load_image_mlp()
    assert all(torch.equal(head.image_mlp.state_dict()[k], v) for k, v in released.items())


def test_logits_are_scaled_cosines_against_the_gallery(model):
    model.eval()
    head = model.heads["geoclip"]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = model(pixel_values=x, output_embeddings=True)
        img = F.normalize(head.image_mlp(out.embeddings), dim=-1)
        gps = F.normalize(head.location_encoder(head.centroids), dim=-1)
    assert out.logits.shape == (3, head.centroids.shape[0])
    assert torch.allclose(out.logits, head.logit_scale.exp() * img @ gps.T, atol=1e-4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(pixel_values=x).logits.dtype == torch.float32  # the similarities stay float32
    # argmax coordinates are the best gallery point (GeoCLIP's prediction)
    best = head.coordinates(out.logits, "argmax")
    assert torch.equal(best, head.centroids[out.logits.argmax(-1)])  # exactly the point, not a mean of one


def test_contrastive_loss_by_hand_and_the_fifo_queue(tiny_dataset):
    m = _model(tiny_dataset, queue_size=5, from_scratch=True)
    head = m.heads["geoclip"]
    emb = torch.randn(3, 1280)
    coords = torch.tensor([[10.0, 20.0], [-30.0, 150.0], [48.8, 2.3]])
    head.eval()  # no enqueue outside training
    loss = head.contrastive_loss(emb, coords)
    assert int(head.queue_count) == 0
    img = head.image_features(emb)
    logits = head.logit_scale.exp() * img @ head.location_features(coords).T
    assert loss.item() == pytest.approx(F.cross_entropy(logits, torch.arange(3)).item(), rel=1e-5)
    head.train()
    head.contrastive_loss(emb, coords)
    assert int(head.queue_count) == 3 and torch.equal(head.queue[:3], coords)
    # the queued points are negatives of the next batch (read before this batch enters the queue)
    nxt = torch.tensor([[0.0, 0.0], [60.0, -100.0]])
    loss = head.contrastive_loss(emb[:2], nxt)
    gps = head.location_features(torch.cat([nxt, coords]))
    expected = F.cross_entropy(head.logit_scale.exp() * head.image_features(emb[:2]) @ gps.T, torch.arange(2))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # a queued point at one of the batch's own places is no negative: of the queue, coords[0] and `nxt` stay
    again = head.contrastive_loss(emb[1:], coords[1:])
    gps = head.location_features(torch.cat([coords[1:], coords[:1], nxt]))
    expected = F.cross_entropy(head.logit_scale.exp() * head.image_features(emb[1:]) @ gps.T, torch.arange(2))
    assert again.item() == pytest.approx(expected.item(), rel=1e-5)
    head.queue[:] = torch.cat([coords, nxt])  # undo that batch's enqueue (2 more points) for the FIFO checks
    head.queue_count -= 2
    # FIFO: 5 slots, 5 points in; the next 2 overwrite the oldest two
    assert int(head.queue_count) == 5 and torch.equal(head.queue, torch.cat([coords, nxt]))
    head.enqueue(torch.tensor([[1.0, 1.0], [2.0, 2.0]]))
    assert head.queue[:2].tolist() == [[1.0, 1.0], [2.0, 2.0]]
    assert torch.equal(head.queue[2:], torch.cat([coords[2:], nxt]))
    # a batch larger than the queue keeps its last points, in ring order
    head.enqueue(torch.arange(16.0).reshape(8, 2))
    assert int(head.queue_count) == 15
    assert sorted(head.queue[:, 0].tolist()) == [6.0, 8.0, 10.0, 12.0, 14.0]


def test_forward_backward_reaches_every_part(model):
    model.train()
    head = model.heads["geoclip"]
    before = int(head.queue_count)
    x = torch.randn(4, 3, 32, 32)
    coords = head.centroids[:4].clone()
    out = model(pixel_values=x, coordinates=coords)
    assert out.loss is not None and torch.isfinite(out.loss)
    out.loss.backward()
    for part in (model.geo.backbone, head.image_mlp, head.location_encoder):
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
    assert head.logit_scale.grad is not None
    assert int(head.queue_count) == before + 4
    # views of one place: per-view logits averaged, the loss too
    model.zero_grad()
    out = model(pixel_values=torch.randn(2, 3, 3, 32, 32), coordinates=coords[:2])
    assert out.logits.shape == (2, head.centroids.shape[0]) and torch.isfinite(out.loss)
    model.zero_grad()
    model.eval()


def test_gallery_cache_is_reused_and_refreshed_after_a_step(tiny_dataset, tmp_path):
    m = _model(tiny_dataset).eval()
    head = m.heads["geoclip"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first = m(pixel_values=x).logits
    cache = head.gallery_embeddings
    with torch.no_grad():
        assert torch.equal(m(pixel_values=x).logits, first)
    assert head.gallery_embeddings is cache  # not recomputed
    state = m.state_dict()
    assert {"heads.geoclip.gallery_embeddings", "heads.geoclip.gallery_checksum", "heads.geoclip.queue"} <= set(state)
    m.train()
    opt = torch.optim.SGD(head.location_encoder.parameters(), lr=0.5)
    m(pixel_values=x, coordinates=head.centroids[:2].clone()).loss.backward()
    opt.step()
    m(pixel_values=x)
    assert head.gallery_embeddings is cache  # training mode keeps the stale cache
    m.eval()
    with torch.no_grad():
        m(pixel_values=x)
    fresh = F.normalize(head.location_encoder(head.centroids), dim=-1)
    assert head.gallery_embeddings is not cache and torch.allclose(head.gallery_embeddings, fresh, atol=1e-6)
    # a stale cache never reaches a checkpoint: save_pretrained re-embeds first, whatever the mode
    m.train()
    m(pixel_values=x, coordinates=head.centroids[:2].clone()).loss.backward()
    opt.step()
    m(pixel_values=x)
    assert head.refresh_gallery() is True and head.refresh_gallery() is False
    m.heads["geoclip"].location_encoder.branches[0].out.bias.data += 0.1
    m.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "model.safetensors")["heads.geoclip.gallery_embeddings"]
    with torch.no_grad():
        assert torch.allclose(saved, F.normalize(head.location_encoder(head.centroids), dim=-1), atol=1e-6)


def test_trainer_steps_reduce_the_loss(tiny_dataset, train, training_args, tmp_path):
    from geohf.training.trainer import GeoTrainer

    m = _model(tiny_dataset, queue_size=16)
    batch = train.select(range(16))

    queued = int(m.heads["geoclip"].queue_count)
    args = training_args(tmp_path, max_steps=6, per_device_train_batch_size=16, learning_rate=3e-4, logging_steps=1)
    trainer = GeoTrainer(model=m, args=args, train_dataset=batch)
    trainer.train()
    assert int(m.heads["geoclip"].queue_count) == queued + 6 * 16
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 6 and all(np.isfinite(losses))
    # one batch, every step: the queue holds its own points after the first, and they are no negatives
    assert losses[-1] < 0.5 * losses[0]


def test_save_reload_and_pipeline(model, tmp_path, monkeypatch):
    from transformers import pipeline

    model.eval()
    model.save_pretrained(tmp_path)
    GeoImageProcessor.from_config(model.config).save_pretrained(tmp_path)
    assert (tmp_path / "location_encoder.py").is_file()
    reloaded = GeoModelForImageGeolocation.from_pretrained(tmp_path).eval()
    head, again = model.heads["geoclip"], reloaded.heads["geoclip"]
    assert torch.equal(again.queue, head.queue) and int(again.queue_count) == int(head.queue_count)
    assert torch.equal(again.gallery_embeddings, head.gallery_embeddings)

    def no_reembedding(*args, **kwargs):
        raise AssertionError("the reloaded model re-embedded its gallery")

    monkeypatch.setattr(again.location_encoder, "encode", no_reembedding)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model(pixel_values=x), reloaded(pixel_values=x)
    # the same weights: equal up to the last float bits (oneDNN may pick another kernel for new buffers)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.coordinates, a.coordinates, rtol=1e-5, atol=1e-4)

    geo = pipeline("image-geolocation", model=str(tmp_path))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    result = geo(image, top_k=3)
    assert len(result["top_k"]) == 3 and result["top_k"][0]["label"] in model.config.head().labels
    assert np.isfinite(result["pred_latitude"]) and result["radius_km"] >= 0
    best = result["top_k"][0]
    assert best["latitude"] == pytest.approx(float(best["label"].split(",")[0]), abs=1e-5)


def test_without_the_geoclip_files(tiny_dataset, monkeypatch):
    monkeypatch.setattr("geohf.modeling.location_encoder.geoclip_files", lambda: None)
    with pytest.raises(UserError, match=r"pip install --no-deps geoclip==1\.3\.0"):
        _model(tiny_dataset)
    with pytest.raises(UserError, match=r"gallery=geoclip .*pip install --no-deps geoclip==1\.3\.0"):
        _model(tiny_dataset, gallery="geoclip", from_scratch=True)
    m = _model(tiny_dataset, from_scratch=True)  # a fresh encoder on the training gallery needs no files
    assert m.heads["geoclip"].logit_scale.item() == pytest.approx(np.log(1 / 0.07))


def test_geoclip_gallery_and_spec_checks(tiny_dataset, train):
    from geohf.data.label_space import label_space

    spec = label_space(train, ["geoclip"], gallery="both", queue_size=8).heads[0]
    # GeoCLIP's 100K points repeat 5,877 of them; the training points are elsewhere
    n_train = len({(round(a, 6), round(b, 6)) for a, b in zip(train["latitude"], train["longitude"])})
    assert len(spec.labels) == 94_123 + n_train
    assert spec.cells["latitude"][:2] == [-50.943392, 34.201047]
    assert spec.cells["country_code"][1] == "US"  # GeoCLIP's second point, near Los Angeles
    with pytest.raises(ValueError, match="gallery"):
        HeadSpec("g", "geoclip", labels=["a"], cells={"latitude": [0.0], "longitude": [0.0]}, gallery="mine")
    with pytest.raises(ValueError, match="gallery coordinates"):
        HeadSpec("g", "geoclip", labels=["a"])


def test_run_training_reports_km_for_a_geoclip_head(tiny_dataset, training_args, tmp_path):
    from geohf.data.transforms import AugmentConfig
    from geohf.training.train import DataArguments, ModelArguments, run_training

    args = training_args(tmp_path / "model", max_steps=2, eval_strategy="steps", eval_steps=2)
    model_args = ModelArguments(
        image_size=32, crop_pct=1.0, heads="geoclip", geoclip_gallery="train", geoclip_queue_size=32
    )
    result = run_training(model_args, DataArguments(dataset=str(tiny_dataset)), AugmentConfig(), args)
    # no class targets: the Trainer's labels are the coordinates alone, so eval has a loss and km errors
    assert args.label_names == ["coordinates"]
    assert np.isfinite(result.metrics["eval_loss"]) and np.isfinite(result.metrics["eval_median_km"])
    assert result.model.config.head().gallery == "train" and result.model.config.head().queue_size == 32
    assert (tmp_path / "model" / "location_encoder.py").is_file()


def test_a_geoclip_model_keeps_the_eager_forward(tiny_dataset):
    """The head's forward checks its gallery cache in Python, which a trace would freeze: such a model never
    gets a traced graph (``geohf.inference.graph``), however many batches it predicts."""
    from geohf.inference import graph
    from geohf.inference.predictor import forward

    m = _model(tiny_dataset).eval()
    assert graph.model_state(m) is None
    with torch.inference_mode():
        for _ in range(graph.EAGER_BATCHES + 2):
            forward(m, torch.randn(2, 3, 32, 32), False)
    assert m not in graph._GRAPHS
