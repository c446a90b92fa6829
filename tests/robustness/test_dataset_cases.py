"""Bad coordinates, metadata and images through `geohf dataset build`; bad models and splits through
training and evaluation."""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest
import torch
from datasets import load_dataset
from PIL import Image

from geohf.cli import main
from geohf.data.samples import land_points, make_lost_and_found

from .corpus import IMAGE_CASES, write_image_cases

# file id → (JSON text, expected: "kept", "fixed" or words of the skip reason)
COORDINATE_CASES = {
    "missing": ('{"country_code": "FR"}', "no coordinates"),
    "nan": ('{"coordinates": [NaN, 2.0]}', "not a finite number"),
    "inf": ('{"coordinates": [Infinity, 2.0]}', "not a finite number"),
    "strings": ('{"coordinates": ["north", "east"]}', "not a finite number"),
    "numeric-strings": ('{"coordinates": ["52.5200", "13.4050"]}', "kept"),
    "lat-91": ('{"coordinates": [91.0, 10.0]}', "out of range"),
    "lat-minus-91": ('{"coordinates": [-91.0, 10.0]}', "out of range"),
    "lon-181": ('{"coordinates": [66.0, 181.0]}', "fixed"),  # 0-360 convention: 179°W, Chukotka
    "lon-361": ('{"coordinates": [10.0, 361.0]}', "out of range"),
    "swapped": ('{"coordinates": [2.3522, 48.8566]}', "probably swapped"),
    "geojson-order": ('{"type": "Point", "coordinates": [2.3522, 48.8566]}', "kept"),
    "at-sea": ('{"coordinates": [0.0, -150.0]}', "at sea"),
    "antimeridian": ('{"coordinates": [66.0, 180.0]}', "kept"),
    "north-pole": ('{"coordinates": [90.0, 0.0]}', "at sea"),
    "south-pole": ('{"coordinates": [-90.0, 0.0]}', "kept"),
    "not-an-object": ("[48.85, 2.35]", "not an object"),
    "broken-json": ('{"coordinates": [48.85, 2.35', "unreadable JSON"),
}


def build(layout: str, root, out, boundaries: str, *extra: str) -> int:
    """``geohf dataset build`` as a user types it."""
    argv = ["dataset", "build", "--layout", layout, "--input", str(root), "--output", str(out)]
    return main([*argv, "--boundaries", boundaries, *extra])


@pytest.fixture(scope="module")
def built(tmp_path_factory, labeller, admin1_path):
    root = make_lost_and_found(tmp_path_factory.mktemp("raw") / "laf", land_points(40, labeller, seed=11))
    image = Image.open(root / "location_0.png")
    for name, (text, _) in COORDINATE_CASES.items():
        image.save(root / f"location_{name}.png")
        (root / f"location_{name}.json").write_text(text)
    out = tmp_path_factory.mktemp("out") / "ds"
    code = build(
        "lost-and-found",
        str(root),
        str(out),
        admin1_path,
        "--cells",
        "quadtree:max_samples=20,min_samples=3",
        "--no-filter",
    )
    assert code == 0
    with open(out / "skipped.csv", encoding="utf-8") as f:
        rows = {r["item"]: r for r in csv.DictReader(f)}
    ds = load_dataset(str(out))
    kept = {
        r["source_file"]: r
        for s in ds
        for r in ds[s].select_columns(["source_file", "latitude", "longitude", "country_code"])
    }
    return rows, kept


@pytest.mark.parametrize("name", sorted(COORDINATE_CASES))
def test_coordinate_and_metadata_cases(name, built, record):
    rows, kept = built
    text, expected = COORDINATE_CASES[name]
    image, meta = f"location_{name}.png", f"location_{name}.json"
    row = rows.get(image) or rows.get(meta)
    if expected == "kept":
        ok = image in kept and row is None
        outcome = (
            f"kept as {kept[image]['country_code']} ({kept[image]['latitude']:.2f}, {kept[image]['longitude']:.2f})"
            if ok
            else str(row)
        )
    elif expected == "fixed":
        ok = image in kept and row is not None and row["action"] == "fixed"
        outcome = f"kept, {row['reason']}" if row else "not fixed"
    else:
        ok = row is not None and row["action"] == "skipped" and expected in row["reason"] and image not in kept
        outcome = f"skipped: {row['reason']}" if row else "not skipped"
    assert record(
        "coordinates / metadata",
        f"{name}: `{text}`",
        "geohf dataset build",
        expected,
        outcome,
        ok,
        fixed=name in {"lon-181", "geojson-order"},
    )


@pytest.fixture(scope="module")
def image_build(tmp_path_factory, admin1_path):
    root = tmp_path_factory.mktemp("imgs") / "folder"
    files = write_image_cases(root)
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "latitude", "longitude"])
        for i, name in enumerate(files):
            w.writerow([name, 46.0 + i * 0.5, 2.0 + i * 0.5])  # France and neighbours, distinct places
        w.writerow(["ok.png", 46.0, 2.0])  # the same file listed twice
    out = tmp_path_factory.mktemp("imgs_out") / "ds"
    code = build(
        "imagefolder",
        str(root),
        str(out),
        admin1_path,
        "--cells",
        "quadtree:max_samples=20,min_samples=2",
        "--no-filter",
        "--fractions",
        "0.6",
        "0.2",
        "0.2",
    )
    assert code == 0
    with open(out / "skipped.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return out, rows


@pytest.mark.parametrize("name", sorted(IMAGE_CASES))
def test_image_cases_in_dataset_build(name, image_build, record):
    out, rows = image_build
    expected = IMAGE_CASES[name]
    row = next((r for r in rows if r["item"] == name), None)
    if expected == "ok":
        ok, outcome = row is None, "kept" if row is None else f"skipped: {row['reason']}"
    else:
        ok = row is not None and "undecodable image" in row["reason"]
        outcome = f"skipped: {row['reason']}" if row else "kept"
    assert record(
        "images",
        name,
        "geohf dataset build",
        "kept" if expected == "ok" else "skipped, reason given",
        outcome,
        ok,
        fixed=name == "gray16.png",
    )


def test_duplicate_and_unicode_rows(image_build, record):
    out, rows = image_build
    dup = [r for r in rows if "listed twice" in r["reason"]]
    ok = len(dup) == 1 and "row" in dup[0]["item"]
    record(
        "coordinates / metadata",
        "file listed twice in metadata.csv",
        "geohf dataset build",
        "second row skipped",
        f"skipped: {dup[0]['item']}: {dup[0]['reason']}" if dup else "not reported",
        ok,
        fixed=True,
    )
    names = set(pd.read_parquet(next((out / "data").glob("*.parquet")))["source_file"]) | {
        r["source_file"] for s in ("validation", "test") for r in load_dataset(str(out), split=s)
    }
    ok_uni = "Straße 東京 🗺.png" in names
    record(
        "coordinates / metadata",
        "unicode / emoji file name",
        "geohf dataset build",
        "kept",
        "kept" if ok_uni else "lost",
        ok_uni,
    )
    assert ok and ok_uni


def test_empty_folder(tmp_path, admin1_path, record, capsys):
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    code = build("grid-folders", str(tmp_path / "empty"), str(tmp_path / "out"), admin1_path)
    errors = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    err = errors[-1] if errors else ""
    ok = code == 2 and len(errors) == 1 and "no usable images" in err and not (tmp_path / "out").exists()
    assert record(
        "coordinates / metadata",
        "empty folder",
        "geohf dataset build",
        "clear error (one line, exit 2), nothing written",
        err,
        ok,
    )


def test_single_class_dataset_trains(tmp_path, admin1_path, record, train_argv):
    """Every sample in one small region: one geocell, one country. Training and evaluation still run."""
    root = tmp_path / "raw"
    root.mkdir()
    image = Image.new("RGB", (64, 48))
    rows = []
    for i in range(30):
        Image.effect_noise((64, 48), 40 + i).convert("RGB").save(root / f"img{i}.png")
        rows.append({"file_name": f"img{i}.png", "latitude": 46.0 + i * 0.01, "longitude": 2.0 + i * 0.01})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    del image
    out = tmp_path / "ds"
    build(
        "imagefolder",
        str(root),
        str(out),
        admin1_path,
        "--cells",
        "quadtree:max_samples=100,min_samples=1",
        "--no-filter",
    )
    model = tmp_path / "model"
    main(["train", *train_argv(out, model, crop_pct=1.0)])
    config = json.loads((model / "config.json").read_text())
    n_cells = len(config["heads"][0]["labels"])
    code = main(["evaluate", "--model", str(model), "--dataset", str(out), "--output", str(tmp_path / "eval")])
    ok = n_cells == 1 and code == 0
    assert record(
        "splits / labels",
        "dataset with a single class",
        "geohf train + evaluate",
        "trains and evaluates",
        f"{n_cells} cell; evaluate exit {code}",
        ok,
    )


def test_empty_split_and_unseen_labels(tiny_model_dir, tiny_dataset, tmp_path, record):
    from geohf.evaluation.evaluation import evaluate
    from geohf.inference.predictor import GeoPredictor

    ds = load_dataset(str(tiny_dataset))
    ds["empty"] = ds["test"].select([])
    with pytest.raises(ValueError) as err:
        evaluate(GeoPredictor(str(tiny_model_dir)), ds, split="empty")
    ok_empty = "is empty" in str(err.value)
    record("splits / labels", "an empty split", "geohf evaluate", "clear error", str(err.value), ok_empty)
    # a test row from a country the model never saw: scored as wrong, nothing crashes
    test = ds["test"].map(lambda r, i: {"country_code": "ZZ" if i == 0 else r["country_code"]}, with_indices=True)
    ds["test"] = test
    result = evaluate(GeoPredictor(str(tiny_model_dir)), ds, split="test")
    preds = result.frame()
    hits = 100.0 * (preds["pred_country_code"] == preds["true_country_code"]).mean()
    ok_unseen = (
        preds["true_country_code"].iloc[0] == "ZZ"
        and preds["pred_country_code"].iloc[0] != "ZZ"  # scored, as a miss
        and result.rows["model"]["country_accuracy"] == pytest.approx(hits)
    )
    record(
        "splits / labels",
        "a label unseen at training time",
        "geohf evaluate",
        "counted as a miss",
        f"country accuracy {result.rows['model']['country_accuracy']:.1f}%, no error",
        ok_unseen,
    )
    assert ok_empty and ok_unseen


def test_bad_model_configs(tiny_model_dir, tiny_dataset, tmp_path, record):
    from geohf.modeling import GeoConfig, GeoModelForImageGeolocation

    with pytest.raises(ValueError) as err:
        GeoConfig(heads=[{"name": "cells", "type": "haversine", "label_column": "cell_quadtree", "labels": ["a"]}])
    ok1 = record(
        "models / configs",
        "a haversine head without its cell partition",
        "GeoConfig / from_pretrained",
        "clear error",
        str(err.value),
        "cell centroids" in str(err.value),
    )
    with pytest.raises(ValueError) as err:
        main(
            [
                "train",
                "--dataset",
                str(tiny_dataset),
                "--output_dir",
                str(tmp_path / "m"),
                "--heads",
                "continent",
                "--max_steps",
                "1",
                "--use_cpu",
                "--report_to",
                "none",
            ]
        )
    ok2 = record(
        "models / configs",
        "a head name that does not exist (`--heads continent`)",
        "scripts/train.py",
        "clear error",
        str(err.value),
        "unknown head" in str(err.value),
    )
    config = GeoConfig.from_pretrained(tiny_model_dir)
    spec = config.heads[0]
    spec["labels"] = spec["labels"] + ["extra"]
    spec["cells"] = {k: (v + [v[0]] if isinstance(v, list) else v) for k, v in spec["cells"].items()}
    with pytest.raises(RuntimeError) as err:
        GeoModelForImageGeolocation.from_pretrained(tiny_model_dir, config=GeoConfig(**config.to_dict()))
    message = str(err.value)
    ok3 = record(
        "models / configs",
        "a checkpoint whose shapes do not match the config",
        "from_pretrained",
        "clear error naming the tensor",
        " ".join(message.split("\n")[1:3]),
        "heads.haversine.fc" in message and "ignore_mismatched_sizes" in message,
        fixed=True,
    )
    assert ok1 and ok2 and ok3 and torch.__version__


def _reference_quality(path, side: int = 256):
    """The image statistics as first written (full decode, float32 ``var`` over strided channels)."""
    import numpy as np

    from geohf.images import decode_image

    im = decode_image(path).image
    width, height = im.size
    im.thumbnail((side, side), Image.Resampling.BILINEAR)
    a = np.asarray(im, dtype=np.float32)
    g = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(a.reshape(-1, 3).var(0).max()), float(lap.var()) if lap.size else 0.0, width, height


def test_image_statistics_unchanged(tmp_path, labeller, record):
    """The faster image check measures what the first one did: the same images pass."""
    import numpy as np
    from PIL import ImageFilter as PILFilter

    from geohf.data.quality import ImageFilter, image_quality
    from geohf.images import ImageLoadError

    files = list(write_image_cases(tmp_path / "corpus").values())
    laf = make_lost_and_found(tmp_path / "laf", land_points(6, labeller, seed=3))
    for i, png in enumerate(
        sorted(laf.glob("*.png"))
    ):  # street-size crops, blurred and darkened towards the thresholds
        base = Image.open(png).convert("RGB")
        for radius in (0.8, 1.5, 2.5, 4.0):
            files.append(tmp_path / f"blur-{i}-{radius}.png")
            base.filter(PILFilter.GaussianBlur(radius)).save(files[-1])
        for k in (0.05, 0.15, 0.3):
            files.append(tmp_path / f"dark-{i}-{k}.jpg")
            Image.fromarray((np.asarray(base) * k).astype(np.uint8)).save(files[-1], quality=90)
    cfg = ImageFilter()
    compared, same = 0, True
    for path in files:
        try:
            ref = _reference_quality(path)
        except (ImageLoadError, OSError, ValueError):
            continue
        got = image_quality(path)
        compared += 1
        passes = [v[0] >= cfg.min_channel_variance and v[1] >= cfg.min_laplacian_variance for v in (ref, got)]
        close = np.allclose(got[:2], ref[:2], rtol=1e-3, atol=1e-3) and got[2:] == ref[2:]
        same &= passes[0] == passes[1] and close
    kept = sum(image_quality(p)[1] >= cfg.min_laplacian_variance for p in files if p.name.startswith("blur-"))
    assert 0 < kept < 24  # the sweep straddles the blur threshold
    assert record(
        "images",
        f"image statistics on {compared} images (corpus, blurred and dark street crops)",
        "geohf dataset build",
        "same pass / fail as the full float32 computation",
        "same" if same else "differs",
        same,
    )
