"""geohf's GeoCLIP location encoder against geoclip's own (the installed ``geoclip`` wheel is the oracle)."""

import importlib
import os
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

from geohf.modeling.location_encoder import (
    LocationEncoder,
    equal_earth,
    geoclip_files,
    geoclip_key,
    read_gallery,
)

# every 20th point of the 100K gallery (5,000: a minute of CPU less than all of them) plus the map's corners;
# GEOHF_GEOCLIP_STRIDE=1 compares the whole gallery (docs/training.md, "GeoCLIP head")
STRIDE = int(os.environ.get("GEOHF_GEOCLIP_STRIDE", "20"))
CORNERS = [[90.0, 180.0], [-90.0, -180.0], [0.0, 180.0], [0.0, -180.0], [0.0, 0.0], [89.999, -179.999]]


@pytest.fixture(scope="module")
def files():
    found = geoclip_files()
    assert found is not None, "the tests need geoclip's files: pip install --no-deps geoclip==1.3.0"
    return found


@pytest.fixture(scope="module")
def oracle():
    """geoclip's ``LocationEncoder`` class, imported from its file: the package ``__init__`` imports its
    training code, which needs geopy, so ``geoclip`` and ``geoclip.model`` are stand-in packages here."""
    spec = importlib.machinery.PathFinder.find_spec("geoclip")
    root = Path(next(iter(spec.submodule_search_locations)))
    saved = {k: v for k, v in sys.modules.items() if k == "geoclip" or k.startswith("geoclip.")}
    for name, path in (("geoclip", root), ("geoclip.model", root / "model")):
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules[name] = package
    try:
        with warnings.catch_warnings():  # its Fourier features are torch.jit.script functions (deprecated)
            warnings.simplefilter("ignore", FutureWarning)
            module = importlib.import_module("geoclip.model.location_encoder")
        yield module
    finally:
        for k in [k for k in sys.modules if k == "geoclip" or k.startswith("geoclip.")]:
            del sys.modules[k]
        sys.modules.update(saved)


@pytest.fixture(scope="module")
def ours(files):
    encoder = LocationEncoder().eval()
    encoder.load_state_dict(files.load_location_encoder(), strict=True)
    return encoder


def test_matches_geoclip_on_its_gallery(files, oracle, ours):
    gallery = files.load_gallery()
    assert gallery.shape == (100_000, 2)
    points = torch.cat([gallery[::STRIDE], torch.tensor(CORNERS)])
    theirs = oracle.LocationEncoder(from_pretrained=True).eval()
    with torch.no_grad():
        expected = torch.cat([theirs(c) for c in points.split(2048)])
        got = ours.encode(points, batch_size=2048)
    diff = (got - expected).abs().max().item()
    print(f"geohf vs geoclip LocationEncoder on {len(points):,} points: max abs difference {diff:.3g}")
    assert got.shape == (len(points), 512)
    assert diff <= 1e-5, f"max abs difference {diff}"
    # and the projection alone
    assert torch.equal(equal_earth(points), oracle.equal_earth_projection(points))


def test_projection_and_features_by_hand():
    # Equal Earth: the origin stays put, the poles are lines at y = ±(the polynomial at theta = pi/3) * SF/180
    p = equal_earth(torch.tensor([[0.0, 0.0], [90.0, 0.0], [-90.0, 40.0], [10.0, 20.0], [10.0, -20.0]]))
    theta = torch.tensor(torch.pi / 3)
    y_pole = (0.003796 * theta**9 + 0.000893 * theta**7 - 0.081106 * theta**3 + 1.340264 * theta) * 66.50336 / 180
    assert p[0].tolist() == [0.0, 0.0]
    assert p[1].tolist() == pytest.approx([0.0, y_pole.item()], abs=1e-6)
    assert p[2, 1].item() == pytest.approx(-y_pole.item(), abs=1e-6) and p[2, 0].item() > 0
    assert p[3, 0].item() == pytest.approx(-p[4, 0].item()) and p[3, 1].item() == pytest.approx(p[4, 1].item())
    # Fourier features: cos and sin of 2*pi*B*v, unit norm per frequency
    encoder = LocationEncoder()
    rff = encoder.branches[2].rff
    v = torch.tensor([[0.1, -0.2]])
    phase = 2 * torch.pi * v @ rff.b.T
    assert torch.allclose(rff(v), torch.cat([phase.cos(), phase.sin()], -1), atol=1e-4)
    assert rff.b.std().item() == pytest.approx(256.0, rel=0.2)  # sigma 2^8
    assert "branches.0.rff.b" in encoder.state_dict() and not any(p is rff.b for p in encoder.parameters())


def test_key_mapping_and_gallery_reader(files, tmp_path):
    assert geoclip_key("LocEnc2.capsule.0.b") == "branches.2.rff.b"
    assert geoclip_key("LocEnc0.capsule.5.weight") == "branches.0.mlp.4.weight"
    assert geoclip_key("LocEnc1.head.0.bias") == "branches.1.out.bias"
    with pytest.raises(KeyError, match="not a GeoCLIP"):
        geoclip_key("image_encoder.mlp.0.weight")
    assert set(files.load_location_encoder()) == set(LocationEncoder().state_dict())
    bad = tmp_path / "g.csv"
    bad.write_text("lat,lon\n1,2\n")
    with pytest.raises(ValueError, match="LAT and LON"):
        read_gallery(bad)
