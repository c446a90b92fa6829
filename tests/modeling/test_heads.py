"""The head registry: one class per kind, one list of names; models load with their cell partitions."""

import subprocess
import sys

import pytest
import torch
from datasets import load_dataset

from geohf.data.label_space import label_space
from geohf.modeling import GeoModelForImageGeolocation, HeadSpec, LabelSpace, create_model
from geohf.modeling.configuration_geohf import HEAD_TYPES
from geohf.modeling.head_names import HEAD_KINDS, HEAD_NAMES
from geohf.modeling.heads import HEADS, ClassificationHead, GeoHead, HeadData, build_head, head_kind, head_type


def test_the_torch_free_names_are_the_registry():
    assert {name: cls.spec_type for name, cls in HEADS.items()} == HEAD_KINDS
    assert set(HEAD_NAMES) == set(HEADS) and set(HEAD_TYPES) == {cls.spec_type for cls in HEADS.values()}
    for name, cls in HEADS.items():
        assert issubclass(cls, GeoHead) and cls.kind == name and head_kind(name) is cls
    # cells, country and region heads are classification heads in config.json (the format of saved models)
    assert head_type("classification") is ClassificationHead
    assert all(issubclass(HEADS[k], ClassificationHead) for k in ("cells", "country", "region"))
    with pytest.raises(ValueError, match="unknown head 'continent'"):
        head_kind("continent")
    script = "import sys; from geohf.modeling.head_names import HEAD_NAMES; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", script], check=True)


def test_modeling_does_not_import_data():
    script = (
        "import sys, geohf.modeling.factory, geohf.modeling.converters.geoclip, geohf.modeling.heads; "
        "loaded = [m for m in sys.modules if m.startswith('geohf.data')]; assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def test_every_kind_builds_its_module_and_loss(tiny_dataset):
    train = load_dataset(str(tiny_dataset), split="train")
    kinds = [k for k in HEAD_NAMES if k != "geoclip"]  # geoclip: tests/modeling/test_geoclip.py
    space = label_space(train, kinds, "quadtree:max_samples=40", gallery="train")
    assert isinstance(space, LabelSpace) and [h.name for h in space.heads] == kinds
    assert list(space.cells) == ["quadtree"]
    coordinates = torch.tensor([[48.0, 2.0], [-30.0, 150.0]])
    for spec in space.heads:
        head = build_head(spec, embed_dim=8)
        assert type(head) is head_type(spec.type) and head.has_coordinates
        embeddings = torch.randn(2, 8)
        out = head(embeddings)
        labels = None if spec.type in ("regression", "flow") else torch.tensor([0, 1])
        loss = head.head_loss(out, embeddings, labels, coordinates)  # a flow head's loss reads the embeddings
        assert loss.ndim == 0 and torch.isfinite(loss), spec.name
    assert build_head(space.heads[0], 8).head_loss(out, None, None, coordinates) is None  # no labels: no loss
    regression = head_kind("regression").spec_from_data(HeadData())
    assert regression == HeadSpec(name="regression", type="regression")
    with pytest.raises(ValueError, match="needs geocells"):
        head_kind("haversine").spec_from_data(HeadData())


def test_create_model_reads_no_data_and_loads_whole(tiny_dataset, tmp_path):
    space = label_space(str(tiny_dataset), ["haversine", "country"])
    model = create_model("tf_efficientnet_lite0", pretrained=None, label_space=space, image_size=32)
    assert [s.name for s in model.config.head_specs] == ["haversine", "country"]
    assert model.cell_partitions == space.cells
    picked = create_model(heads=["country", "regression"], pretrained=None, label_space=space, image_size=32)
    assert [s.name for s in picked.config.head_specs] == ["country", "regression"] and not picked.cell_partitions
    model.save_pretrained(tmp_path / "model")
    again = GeoModelForImageGeolocation.from_pretrained(tmp_path / "model")
    assert again.cell_partitions["quadtree"].names == space.cells["quadtree"].names
