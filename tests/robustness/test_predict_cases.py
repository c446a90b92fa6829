"""The bad-image corpus through `geohf predict` and `pipeline("image-geolocation")`."""

from __future__ import annotations

import json

import pytest
from transformers import pipeline

import geohf.inference.pipeline  # noqa: F401  (registers pipeline("image-geolocation"))
from geohf import images as images_module
from geohf.cli import main
from geohf.images import ImageLoadError

from .corpus import IMAGE_CASES, write_image_cases


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return write_image_cases(tmp_path_factory.mktemp("predict_cases") / "images")


@pytest.fixture
def no_heif(monkeypatch):
    """Pretend pillow-heif is not installed (the case a user without it hits)."""
    monkeypatch.setattr(images_module, "heif_available", lambda: False)


@pytest.fixture(scope="module")
def geo(tiny_model_dir):
    return pipeline("image-geolocation", model=str(tiny_model_dir))


def test_image_cases_through_geohf_predict(cases, tiny_model_dir, tmp_path, capsys, no_heif, record):
    out = tmp_path / "pred.jsonl"
    folder = next(iter(cases.values())).parent
    code = main(["predict", "--model", str(tiny_model_dir), str(folder), "-o", str(out), "--workers", "0", "--quiet"])
    err = capsys.readouterr().err
    records = {json.loads(line)["file"].split("/")[-1]: json.loads(line) for line in out.read_text().splitlines()}
    messages = {line.split(": ", 2)[1].split("/")[-1]: line for line in err.splitlines() if line.startswith("error: ")}
    bad = [n for n, e in IMAGE_CASES.items() if e != "ok"]
    results = []
    for name, expected in IMAGE_CASES.items():
        if expected == "ok":
            ok = name in records and name not in messages and -90 <= records[name]["pred_latitude"] <= 90
            outcome = f"predicted {records[name]['pred_country']}" if name in records else messages.get(name, "missing")
        else:
            line = messages.get(name, "")
            ok = name not in records and expected in line and name in line
            outcome = line.removeprefix("error: ").replace(str(folder) + "/", "") or "no error reported"
        results.append(ok)
        record(
            "images",
            name,
            "geohf predict",
            "predicted" if expected == "ok" else f"error: '{expected}'",
            outcome,
            ok,
            fixed=name == "gray16.png",
        )
    summary_ok = code == 1 and f"{len(bad)} of {len(IMAGE_CASES)} images could not be read" in err
    record(
        "images",
        "a folder with some unreadable images",
        "geohf predict",
        "the rest predicted, exit 1, count",
        f"exit {code}; {len(records)} predicted; '{len(bad)} of {len(IMAGE_CASES)} images could not be read'",
        summary_ok,
    )
    assert all(results) and summary_ok


@pytest.mark.parametrize("name", sorted(IMAGE_CASES))
def test_image_cases_through_the_pipeline(name, cases, geo, no_heif, record):
    expected = IMAGE_CASES[name]
    try:
        result = geo(str(cases[name]))
        ok, outcome = (
            expected == "ok",
            f"predicted {result['pred_country']} ({result['pred_latitude']:.1f}, {result['pred_longitude']:.1f})",
        )
    except ImageLoadError as err:
        ok, outcome = expected != "ok" and expected in str(err) and name in str(err), f"ImageLoadError: {err.reason}"
    record(
        "images",
        name,
        'pipeline("image-geolocation")',
        "predicted" if expected == "ok" else "ImageLoadError",
        outcome,
        ok,
    )
    assert ok, outcome


def test_exif_rotation_is_applied(cases):
    image = images_module.decode_image(cases["rotated.jpg"]).image
    assert image.size == (40, 80)  # stored 80×40, orientation 6 turns it upright


def test_sixteen_bit_is_rescaled_not_white(cases):
    image = images_module.decode_image(cases["gray16.png"]).image
    low, high = image.convert("L").getextrema()
    assert low < 10 and high > 245 and image.mode == "RGB"
