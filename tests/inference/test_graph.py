"""The traced inference forward (``geohf.inference.graph``): the eager forward's numbers, bit for bit, or
the eager forward itself."""

import gc
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geohf.inference import graph
from geohf.inference.inputs import ImageRef, PredictItem
from geohf.inference.predictor import GeoPredictor, forward
from geohf.inference.stream import iter_predictions
from geohf.modeling import build_model
from geohf.modeling.factory import make_config

sys.path.insert(0, str(Path(__file__).parents[1] / "modeling"))
from test_backbones import heads  # noqa: E402  (a cell, a regression and a country head: logits of each in a dict)


def small_model(backbone: str = "tf_efficientnet_lite0", **kwargs):
    torch.manual_seed(0)
    return build_model(make_config(backbone, heads(), image_size=32, **kwargs), None).eval()


def leaves(out) -> list[torch.Tensor]:
    return torch.utils._pytree.tree_leaves(out)


def eager(model, x: torch.Tensor, bf16: bool, **kwargs):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return model(pixel_values=x.contiguous(memory_format=torch.channels_last), **kwargs)


def graphs(model) -> dict:
    return graph._GRAPHS[model][1] if model in graph._GRAPHS else {}


def current(model) -> "graph._Graph":
    (kind,) = graphs(model).values()
    return kind


@pytest.mark.parametrize("bf16", [True, False])
def test_the_graph_gives_the_eager_outputs_bit_for_bit(bf16):
    """After EAGER_BATCHES eager batches the traced graph answers, for every batch size once checked, with
    and without embeddings: the same tensors as the eager forward, to the last bit."""
    model = small_model()
    x = torch.randn(6, 3, 32, 32)
    with torch.inference_mode():
        for i in range(graph.EAGER_BATCHES + 4):
            batch = x[: 3 if i == graph.EAGER_BATCHES + 3 else 6]
            for embeddings in (False, True):
                got = forward(model, batch, bf16, output_embeddings=embeddings)
                want = eager(model, batch, bf16, output_embeddings=embeddings)
                assert type(got) is type(want) and list(got.keys()) == list(want.keys())
                assert len(got.logits_per_head) == 3 and (got.embeddings is not None) == embeddings
                assert all(torch.equal(a, b) for a, b in zip(leaves(got), leaves(want)))
    kinds = graphs(model)
    assert len(kinds) == 2  # with and without embeddings
    assert all(g.module is not None and not g.failed and g.checked == {6, 3} for g in kinds.values())


def test_the_graph_keeps_neither_the_model_alive_nor_its_gradients_off():
    """Tracing turns the parameters' requires_grad off (a graph constant may not need grad) and back on; the
    graph holds the model's tensors, not the model: a model let go is collected, its graphs with it."""
    model = small_model()
    with torch.inference_mode():
        for _ in range(graph.EAGER_BATCHES + 2):
            forward(model, torch.randn(2, 3, 32, 32), True)
    assert current(model).module is not None
    assert all(p.requires_grad for p in model.parameters())
    held = weakref.ref(model)
    del model
    gc.collect()
    assert held() is None


def test_a_model_that_branches_on_its_input_runs_eagerly():
    """timm's ViT asserts its input size, which the tracer warns it cannot follow: that graph is never used."""
    model = small_model("vit_small_patch16_224", backbone_kwargs='{"img_size": 32}')
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        for _ in range(graph.EAGER_BATCHES + 2):
            got, want = forward(model, x, True), eager(model, x, True)
            assert all(torch.equal(a, b) for a, b in zip(leaves(got), leaves(want)))
    (kind,) = graphs(model).values()
    assert kind.failed and kind.module is None


def test_a_changed_model_is_not_served_an_old_graph():
    """A new coordinate rule in the config (as tune_coordinate_rule sets it), train() / eval(), or gradients:
    the graph traced before is not used."""
    model = small_model()
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        for _ in range(graph.EAGER_BATCHES + 2):
            before = forward(model, x, True)
        assert current(model).module is not None
        model.config.coordinate_method = "argmax"
        after = forward(model, x, True)
        assert torch.equal(after.coordinates, eager(model, x, True).coordinates)
        assert not torch.equal(after.coordinates, before.coordinates)
        assert current(model).module is None  # the model's new state: traced again later
        for _ in range(graph.EAGER_BATCHES + 2):
            forward(model, x, True)
        assert current(model).module is not None
        norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        norm.train()  # one module's mode (the model itself still in eval mode): batch statistics now
        got = forward(model, x, True)
        assert torch.equal(got.coordinates, eager(model, x, True).coordinates)
        assert current(model).module is None and current(model).calls == 1
        model.eval()
    forward(model, x, True)  # gradients on: the eager forward, not counted
    model.train()
    with torch.inference_mode():
        forward(model, x, True)  # training mode: the same
    assert current(model).calls == 1


def _traced(model, x):
    with torch.inference_mode():
        for _ in range(graph.EAGER_BATCHES + 2):
            forward(model, x, False)
    assert current(model).module is not None


@pytest.mark.parametrize("change", ["assign", "submodule", "dtype"])
def test_replaced_weights_are_never_served_a_stale_graph(change):
    """Weights replaced without the model knowing (``load_state_dict(..., assign=True)``, a swapped head
    module, a dtype round trip): the next forward is the eager forward of the new weights, never the graph
    of the old ones."""
    model, x = small_model(), torch.randn(4, 3, 32, 32)
    _traced(model, x)
    with torch.no_grad():
        if change == "assign":
            state = {k: v.clone() + (0.5 if k.endswith("fc.weight") else 0.0) for k, v in model.state_dict().items()}
            model.load_state_dict(state, assign=True)
        elif change == "submodule":
            name, head = next(iter(model.heads.items()))
            fresh = torch.nn.Linear(head.fc.in_features, head.fc.out_features)
            fresh.weight.copy_(head.fc.weight * 2)
            fresh.bias.copy_(head.fc.bias)
            head.fc = fresh
        else:
            model.to(torch.float64).to(torch.float32)  # new tensors of the same values
    with torch.inference_mode():
        got = forward(model, x, False)
        want = eager(model, x, False)
    for a, b in zip(leaves(got), leaves(want)):
        assert torch.equal(a, b)
    assert current(model).module is None  # dropped with the old tensors: traced again later


def test_predictions_with_the_graph_are_those_without(tiny_model_dir, tmp_path, monkeypatch):
    """geohf predict on PNG files, in two streams and batches of 4 (the last one short): the same records
    and probabilities with the graph as with the eager forward only."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(23):
        path = tmp_path / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (24 + i, 40, 3), dtype=np.uint8)).save(path)
        files.append(PredictItem([ImageRef(str(path))]))

    def records(predictor) -> list:
        return [(p.record, p.probs.tolist()) for p in iter_predictions(predictor, files, 4, progress=False, streams=2)]

    monkeypatch.setattr(graph, "EAGER_BATCHES", 10**9)
    without = records(GeoPredictor(str(tiny_model_dir)))
    monkeypatch.setattr(graph, "EAGER_BATCHES", 2)
    predictor = GeoPredictor(str(tiny_model_dir))
    assert records(predictor) == without
    assert records(predictor) == without  # every batch from the graph now
    (kind,) = graphs(predictor.model).values()
    assert kind.module is not None and kind.checked == {4, 3}


def test_the_pipeline_runs_the_graph_and_it_follows_the_weights(tiny_model_dir, monkeypatch):
    """pipeline("image-geolocation") (under no_grad, not inference_mode) traces the graph too, with the same
    answers; weights changed in place afterwards reach the graph (it shares the model's tensors)."""
    from transformers import pipeline

    import geohf.inference.pipeline  # noqa: F401  (registers pipeline("image-geolocation"))

    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)) for _ in range(12)]

    def changed(geo) -> None:
        with torch.no_grad():
            for p in geo.model.parameters():
                p.mul_(1.01)

    monkeypatch.setattr(graph, "EAGER_BATCHES", 10**9)
    eager_geo = pipeline("image-geolocation", model=str(tiny_model_dir), device="cpu")
    without = eager_geo(images, batch_size=4)
    changed(eager_geo)
    changed_without = eager_geo(images, batch_size=4)
    monkeypatch.setattr(graph, "EAGER_BATCHES", 1)
    geo = pipeline("image-geolocation", model=str(tiny_model_dir), device="cpu")
    assert geo(images, batch_size=4) == without
    assert current(geo.model).module is not None and current(geo.model).checked == {4}
    changed(geo)
    assert geo(images, batch_size=4) == changed_without != without


def _replace_weights(model, change: str) -> None:
    """New tensors the model is not told about: ``load_state_dict(..., assign=True)`` of scaled weights, or a
    head's first linear layer swapped for one with doubled weights."""
    with torch.no_grad():
        if change == "assign":
            state = {k: v * 1.5 if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()}
            model.load_state_dict(state, assign=True)
            return
        parent, name, layer = next(
            (m, n, c) for m in model.heads.modules() for n, c in m.named_children() if isinstance(c, torch.nn.Linear)
        )
        fresh = torch.nn.Linear(layer.in_features, layer.out_features)
        fresh.weight.copy_(layer.weight * 2)
        fresh.bias.copy_(layer.bias)
        setattr(parent, name, fresh)


@pytest.mark.parametrize("change", ["assign", "submodule"])
def test_the_pipeline_follows_weights_replaced_between_calls(tiny_model_dir, monkeypatch, change):
    """The pipeline reads the model's state once per call (not per batch): weights replaced between two calls
    give the next call the new weights' answers, never the old graph's."""
    from transformers import pipeline

    import geohf.inference.pipeline  # noqa: F401  (registers pipeline("image-geolocation"))

    rng = np.random.default_rng(2)
    images = [Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)) for _ in range(12)]
    monkeypatch.setattr(graph, "EAGER_BATCHES", 10**9)
    eager_geo = pipeline("image-geolocation", model=str(tiny_model_dir), device="cpu")
    before = eager_geo(images, batch_size=4)
    _replace_weights(eager_geo.model, change)
    after = eager_geo(images, batch_size=4)
    assert after != before
    monkeypatch.setattr(graph, "EAGER_BATCHES", 1)
    geo = pipeline("image-geolocation", model=str(tiny_model_dir), device="cpu")
    assert geo(images, batch_size=4) == before
    assert current(geo.model).module is not None
    _replace_weights(geo.model, change)
    assert geo(images, batch_size=4) == after


@pytest.mark.parametrize("change", ["assign", "submodule"])
def test_geohf_predict_follows_weights_replaced_between_runs(tiny_model_dir, tmp_path, monkeypatch, change):
    """geohf predict reads the model's state once per run (not per batch): weights replaced between two runs
    give the second run the new weights' records, never the old graph's."""
    rng = np.random.default_rng(3)
    files = []
    for i in range(12):
        path = tmp_path / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(path)
        files.append(PredictItem([ImageRef(str(path))]))

    def records(predictor) -> list:
        return [(p.record, p.probs.tolist()) for p in iter_predictions(predictor, files, 4, progress=False, streams=2)]

    monkeypatch.setattr(graph, "EAGER_BATCHES", 10**9)
    eager_predictor = GeoPredictor(str(tiny_model_dir))
    before = records(eager_predictor)
    _replace_weights(eager_predictor.model, change)
    after = records(eager_predictor)
    assert after != before
    monkeypatch.setattr(graph, "EAGER_BATCHES", 1)
    predictor = GeoPredictor(str(tiny_model_dir))
    assert records(predictor) == before
    assert current(predictor.model).module is not None
    _replace_weights(predictor.model, change)
    assert records(predictor) == after
