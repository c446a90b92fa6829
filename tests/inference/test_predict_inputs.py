"""``geohf predict``: inputs (folders, globs, URLs, datasets, grouped views), outputs, streaming."""

import argparse
import functools
import http.server
import json
import threading

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from datasets import load_dataset
from PIL import Image

from geohf.commands.predict import register_subcommand
from geohf.geo.sphere import haversine_km
from geohf.inference.inputs import Inputs, collect_inputs, group_by_csv, group_by_pattern
from geohf.inference.predictor import GeoPredictor
from geohf.inference.stream import PredictOptions, run_prediction
from geohf.inference.writers import PREDICTION_COLUMNS, JsonlWriter

PREDICTION_KEYS = {*PREDICTION_COLUMNS, "top_k"}


def geohf(*argv) -> int:
    parser = argparse.ArgumentParser(prog="geohf")
    register_subcommand(parser.add_subparsers())
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


@pytest.fixture(scope="module")
def tiles(tiny_dataset, tmp_path_factory):
    """8 test tiles as PNG: 3 at the top, 3 in a subfolder, 2 in a sub-subfolder; a text file beside them."""
    root = tmp_path_factory.mktemp("tiles")
    ds = load_dataset(str(tiny_dataset), split="test")
    folders = [root] * 3 + [root / "sub"] * 3 + [root / "sub" / "deeper"] * 2
    paths = []
    for i, folder in enumerate(folders):
        folder.mkdir(parents=True, exist_ok=True)
        ds[i]["image"].save(folder / f"tile{i}.png")
        paths.append(folder / f"tile{i}.png")
    (root / "sub" / "notes.txt").write_text("not an image")
    return {"root": root, "paths": paths, "rows": ds.select(range(8))}


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return GeoPredictor(str(tiny_model_dir), top_k=3, bf16=False)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_collect_inputs_folders_globs_and_what_is_left_out(tiles, tmp_path):
    root = tiles["root"]
    inputs = collect_inputs([root, str(root / "tile0.png"), str(root / "*.jpg"), str(tmp_path), "https://x.org/a.jpg"])
    names = [item.name for item in inputs.items]
    assert names == sorted(map(str, tiles["paths"])) + ["https://x.org/a.jpg"]
    assert inputs.left_out["inputs given more than once"] == 1
    assert sum(inputs.left_out.values()) == 2  # the duplicate and notes.txt
    assert any("notes.txt" in note for note in inputs.notes())
    assert [e.reason for e in inputs.errors] == [
        "no image file matches this pattern; check the path",
        "folder holds no image files",
    ]
    assert inputs.n_images == 8 + 1 + 2

    flat = collect_inputs([root], recursive=False)
    assert len(flat.items) == 3
    globbed = collect_inputs([str(root / "**" / "*.png")])
    assert len(globbed.items) == 8


def test_predict_folder_to_csv_and_parquet(tiny_model_dir, tiles, tmp_path, capsys):
    csv_path, parquet_path = tmp_path / "pred.csv", tmp_path / "pred.parquet"
    assert geohf("predict", "--model", tiny_model_dir, tiles["root"], "--output", csv_path, "--top-k", "2") == 0
    assert "left out 1 file without an image extension" in capsys.readouterr().err
    frame = pd.read_csv(csv_path)
    assert list(frame["file"]) == sorted(map(str, tiles["paths"]))
    assert {"error_km", "exif_latitude", "true_latitude"} <= set(frame.columns)
    assert frame["pred_latitude"].between(-90, 90).all() and frame["error_km"].isna().all()
    assert [len(json.loads(t)) for t in frame["top_k"]] == [2] * 8

    code = geohf("predict", "--model", tiny_model_dir, tiles["root"], "--output", parquet_path, "--batch-size", "3")
    assert code == 0
    table = pq.read_table(parquet_path)
    assert table.num_rows == 8 and table.schema.field("top_k").type.value_type.num_fields == 4
    assert table.column("pred_country_code").to_pylist() == frame["pred_country_code"].tolist()
    assert np.allclose(table.column("pred_latitude").to_numpy(), frame["pred_latitude"].to_numpy(), atol=1e-4)
    assert not list(tmp_path.glob("*.tmp"))


def test_predict_dataset_split_reports_truth_and_error(tiny_model_dir, tiny_dataset, tmp_path):
    out = tmp_path / "pred.jsonl"
    assert (
        geohf("predict", "--model", tiny_model_dir, "--dataset", tiny_dataset, "--split", "test", "--output", out) == 0
    )
    records = read_jsonl(out)
    truth = load_dataset(str(tiny_dataset), split="test")
    assert [r["file"] for r in records] == [f"test/{i}" for i in range(len(truth))]
    for r, lat, lon in zip(records, truth["latitude"], truth["longitude"]):
        assert (r["true_latitude"], r["true_longitude"]) == (lat, lon)
        assert r["error_km"] == pytest.approx(
            float(haversine_km(lat, lon, r["pred_latitude"], r["pred_longitude"])), abs=0.1
        )

    assert geohf("predict", "--model", tiny_model_dir, "--dataset", tiny_dataset, "--split", "nope") == 2
    assert geohf("predict", "--model", tiny_model_dir, "--dataset", tiny_dataset, "--image-column", "x") == 2


def test_streamed_predictions_match_the_predictor(predictor, tiles):
    """The streamed path gives what predict_images gives on the same decoded images."""
    inputs = collect_inputs([tiles["root"]])
    run = run_prediction(predictor, inputs, PredictOptions(batch_size=3, progress=False), keep_records=True)
    images = [Image.open(p).convert("RGB") for p in sorted(map(str, tiles["paths"]))]
    direct = predictor.predict_images(images).records()
    assert [r["pred_country_code"] for r in run.records] == [d["pred_country_code"] for d in direct]
    for r, d in zip(run.records, direct):
        assert [t["label"] for t in r["top_k"]] == [t["label"] for t in d["top_k"]]
        assert (r["pred_latitude"], r["pred_longitude"], r["score"]) == pytest.approx(
            (d["pred_latitude"], d["pred_longitude"], d["score"]), abs=1e-3
        )


def test_two_streams_predict_as_one_and_keep_the_callers_threads(
    predictor, tiles, tmp_path, tiny_model_dir, threads_kept
):
    """Batches predicted two at a time (each in its own thread with its share of torch's threads) give the
    records and errors of one at a time, in input order; the caller's and new threads' counts are unchanged,
    also when the consumer stops early."""
    from geohf.inference.inputs import ImageRef, PredictItem
    from geohf.inference.stream import iter_predictions

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    paths = [*map(str, tiles["paths"][:4]), str(broken), *map(str, tiles["paths"][4:])]
    items = [PredictItem([ImageRef(p)]) for p in paths]
    threads = torch.get_num_threads()
    runs = {}
    for streams in (1, 2):
        errors = []
        records = [p.record for p in iter_predictions(predictor, items, 2, on_error=errors.append, streams=streams)]
        runs[streams] = (records, [e.path for e in errors])
        assert torch.get_num_threads() == threads
    (one, one_errors), (two, two_errors) = runs[1], runs[2]
    assert [r["file"] for r in two] == [r["file"] for r in one] == [p for p in paths if p != str(broken)]
    assert two_errors == one_errors == [str(broken)]
    for a, b in zip(one, two):
        assert [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]]
        assert (a["pred_latitude"], a["pred_longitude"], a["score"]) == pytest.approx(
            (b["pred_latitude"], b["pred_longitude"], b["score"]), abs=1e-4
        )
    outputs = []
    for streams in ("1", "2"):
        outputs.append(tmp_path / f"streams{streams}.jsonl")
        assert geohf("predict", "--model", tiny_model_dir, tiles["root"], "--streams", streams, "-o", outputs[-1]) == 0
    assert [r["file"] for r in read_jsonl(outputs[0])] == [r["file"] for r in read_jsonl(outputs[1])]
    stopped = iter_predictions(predictor, items, 2, streams=2)
    next(stopped)
    stopped.close()
    threads_kept(threads)


@pytest.fixture
def http_folder(tiles):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tiles["root"]))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_predict_urls(tiny_model_dir, http_folder, tmp_path, capsys):
    out = tmp_path / "pred.jsonl"
    good, missing = f"{http_folder}/tile0.png", f"{http_folder}/missing.png"
    assert geohf("predict", "--model", tiny_model_dir, good, missing, "--output", out) == 1
    err = capsys.readouterr().err
    assert f"error: {missing}: download failed (404" in err and "1 of 2 images could not be read" in err
    assert [r["file"] for r in read_jsonl(out)] == [good]


@pytest.fixture(scope="module")
def views(tiles, tmp_path_factory):
    """Three places photographed 2, 3 and 1 times: place{p}_{v}.png."""
    folder = tmp_path_factory.mktemp("views")
    sizes = {"a": 2, "b": 3, "c": 1}
    rows, i = [], 0
    for place, n in sizes.items():
        for v in range(n):
            path = folder / f"place{place}_{v}.png"
            tiles["rows"][i]["image"].save(path)
            rows.append({"file": path.name, "location_id": place, "latitude": 10.0, "longitude": 20.0, "path": path})
            i += 1
    pd.DataFrame(rows).drop(columns="path").to_csv(folder / "views.csv", index=False)
    return {"folder": folder, "rows": rows}


def test_multiview_groups_by_pattern_and_csv(tiny_model_dir, predictor, views, tmp_path):
    out = tmp_path / "pred.jsonl"
    pattern = r"place(?P<location>\w)_\d\.png$"
    assert (
        geohf("predict", "--model", tiny_model_dir, views["folder"], "--group-pattern", pattern, "-o", out, "--no-bf16")
        == 0
    )
    records = read_jsonl(out)
    assert [r["location_id"] for r in records] == ["a", "b", "c"]
    assert [len(r["files"]) for r in records] == [2, 3, 1]
    # the same as giving the model the views of each place together
    for r in records:
        views_b = [Image.open(f).convert("RGB") for f in r["files"]]
        direct = predictor.predict_images([views_b]).records()[0]
        assert (r["pred_latitude"], r["pred_longitude"]) == pytest.approx(
            (direct["pred_latitude"], direct["pred_longitude"]), abs=1e-3
        )

    out_csv = tmp_path / "csv.jsonl"
    assert (
        geohf(
            "predict",
            "--model",
            tiny_model_dir,
            "--group-csv",
            views["folder"] / "views.csv",
            "-o",
            out_csv,
            "--no-bf16",
        )
        == 0
    )
    by_csv = read_jsonl(out_csv)
    assert [r["location_id"] for r in by_csv] == ["a", "b", "c"]
    assert [r["top_k"] for r in by_csv] == [r["top_k"] for r in records]
    for r in by_csv:  # the CSV's coordinates (10, 20) are the truth each place is scored against
        assert (r["true_latitude"], r["true_longitude"]) == (10.0, 20.0)
        assert r["error_km"] == pytest.approx(
            float(haversine_km(10.0, 20.0, r["pred_latitude"], r["pred_longitude"])), abs=0.1
        )

    grouped = group_by_pattern(collect_inputs([views["folder"]]), r"place(\w)_0\.png$")
    assert len(grouped.items) == 3 and len(grouped.errors) == 3  # the _1 and _2 views do not match
    assert "does not match --group-pattern" in grouped.errors[0].reason


def test_group_csv_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,place\na.png,x\n")
    with pytest.raises(ValueError, match="needs columns 'file' and 'location_id'"):
        group_by_csv(bad)
    holes = tmp_path / "holes.csv"
    holes.write_text("file,location_id\na.png,x\n,y\n")
    inputs = group_by_csv(holes)
    assert len(inputs.items) == 1 and "holes.csv:3" in str(inputs.errors[0])


def test_streaming_keeps_nothing_and_workers_keep_order(predictor, tiles, tmp_path, lazy_items):
    items = lazy_items(tiles["paths"], 100)
    out0, out2 = tmp_path / "w0.jsonl", tmp_path / "w2.jsonl"
    run = run_prediction(
        predictor, Inputs(items=items), PredictOptions(batch_size=16, output=str(out0), progress=False)
    )
    assert run.predicted == 100 and run.records == [] and not run.errors
    options = PredictOptions(batch_size=16, num_workers=2, output=str(out2), progress=False)
    run_prediction(predictor, Inputs(items=items), options)
    a, b = read_jsonl(out0), read_jsonl(out2)
    assert [r["file"] for r in a] == [str(tiles["paths"][i % 8]) for i in range(100)]
    assert [r["file"] for r in b] == [r["file"] for r in a]
    assert [r["pred_latitude"] for r in b] == pytest.approx([r["pred_latitude"] for r in a], abs=1e-4)


def test_failed_run_leaves_no_output(predictor, tiles, tmp_path):
    out = tmp_path / "pred.jsonl"
    out.write_text("previous run\n")

    class Boom(Exception):
        pass

    calls = {"n": 0}
    original = predictor.predict_tensors

    def flaky(pixel_values, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Boom()
        return original(pixel_values, **kwargs)

    predictor.predict_tensors = flaky
    try:
        with pytest.raises(Boom):
            run_prediction(predictor, collect_inputs([tiles["root"]]), PredictOptions(batch_size=2, output=str(out)))
    finally:
        del predictor.predict_tensors
    assert out.read_text() == "previous run\n" and not list(tmp_path.glob("*.tmp"))
    with pytest.raises(RuntimeError), JsonlWriter(tmp_path / "x.jsonl", []) as w:
        w.write([{"a": 1}])
        raise RuntimeError
    assert not list(tmp_path.glob("x.jsonl*"))


def test_usage_errors(tiny_model_dir, tiles, capsys):
    assert geohf("predict", "--model", tiny_model_dir) == 2
    assert "nothing to predict" in capsys.readouterr().err
    assert geohf("predict", "--model", tiny_model_dir, tiles["root"], "--format", "parquet") == 2
    assert "Parquet cannot go to stdout" in capsys.readouterr().err
    assert geohf("predict", "--model", tiny_model_dir.parent / "missing", tiles["paths"][0]) == 2
    assert "--model" in (err := capsys.readouterr().err) and "no such model folder" in err


def test_stdout_jsonl(tiny_model_dir, tiles, capsys):
    assert geohf("predict", "--model", tiny_model_dir, tiles["paths"][0], "--quiet") == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert set(record) == {"file"} | PREDICTION_KEYS


def test_bf16_and_fp32_agree(tiny_model_dir, tiles):
    images = [Image.open(p).convert("RGB") for p in tiles["paths"][:4]]
    fp32 = GeoPredictor(str(tiny_model_dir), bf16=False).predict_images(images)
    bf16 = GeoPredictor(str(tiny_model_dir), bf16=True).predict_images(images)
    assert torch.allclose(torch.tensor(fp32.score), torch.tensor(bf16.score), atol=0.02)
