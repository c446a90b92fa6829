"""``--engine ray`` for predict and evaluate: the records and the metrics equal the local engine's, an actor
killed mid-run changes nothing, the embeddings for an index equal the local ones, a missing Ray is one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from geohf.cli import main

pytest.importorskip("ray")  # the [ray] extra (in dev)

RAY_RUN_S = 240  # a bound on every Ray run here (a hung pipeline fails the test instead of waiting)


@pytest.fixture(scope="module")
def local_records(tiny_model_dir, tiny_dataset, tmp_path_factory) -> pd.DataFrame:
    """``geohf predict --dataset`` on the local engine, fp32."""
    out = tmp_path_factory.mktemp("local") / "records.parquet"
    argv = ["predict", "--model", str(tiny_model_dir), "--dataset", str(tiny_dataset), "--split", "test"]
    assert main([*argv, "--no-bf16", "--batch-size", "4", "--quiet", "--output", str(out)]) == 0
    return pd.read_parquet(out)


def ray_options(**kw):
    from geohf.inference.ray import RayPredictOptions

    base = dict(batch_size=4, actors=1, actor_cpus=0.25, decode_cpus=0.25, predictor={"bf16": False})
    return RayPredictOptions(**{**base, **kw})


def in_row_order(frame: pd.DataFrame) -> pd.DataFrame:
    order = frame["file"].str.split("/").str[-1].astype(int).argsort()
    return frame.iloc[order].reset_index(drop=True)


def assert_same_records(ray_frame: pd.DataFrame, local: pd.DataFrame, rows: int = 20) -> None:
    """Every column equal, numbers within 1e-5 (fp32), top-k labels equal and their scores within 1e-5.

    Records are rounded (5 decimals, km to 0.1): two values 1e-5 apart can round one step further apart, so each
    column is compared within 1e-5 plus its rounding step."""
    ray_frame, local = in_row_order(ray_frame), in_row_order(local)
    assert list(ray_frame.columns) == list(local.columns)
    assert len(ray_frame) == len(local) == rows
    for column in local.columns:
        if column == "top_k":
            for a, b in zip(ray_frame[column], local[column]):
                assert [t["label"] for t in a] == [t["label"] for t in b]
                np.testing.assert_allclose([t["score"] for t in a], [t["score"] for t in b], atol=2e-5)
        elif local[column].dtype.kind == "f":
            step = 0.1 if column.endswith("_km") else 1e-5
            got, want = ray_frame[column], local[column]
            np.testing.assert_allclose(got, want, atol=1e-5 + step, rtol=0, equal_nan=True, err_msg=column)
        else:
            assert ray_frame[column].tolist() == local[column].tolist(), column


def bounded(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a thread, failing the test after :data:`RAY_RUN_S` seconds."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(fn, *args, **kwargs).result(timeout=RAY_RUN_S)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def test_predict_on_ray_equals_local(ray_local, tiny_model_dir, tiny_dataset, local_records, tmp_path, capsys):
    """``geohf predict --engine ray`` (two actors) writes the local engine's records into a Parquet folder."""
    out = tmp_path / "records"
    argv = ["predict", "--model", str(tiny_model_dir), "--dataset", str(tiny_dataset), "--split", "test"]
    argv += ["--no-bf16", "--batch-size", "4", "--engine", "ray", "--actors", "2", "--output", str(out)]
    assert bounded(main, argv) == 0
    assert "wrote 20 predictions" in capsys.readouterr().err
    assert_same_records(pd.read_parquet(out), local_records)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    assert main(argv) == 2  # an existing folder is refused, not overwritten
    assert "a non-empty folder exists there" in capsys.readouterr().err


@pytest.fixture(scope="module")
def damaged_dataset(tiny_dataset, tmp_path_factory):
    """The tiny dataset with test row 3's image bytes replaced by text."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path_factory.mktemp("damaged") / "bluemarble"
    shutil.copytree(tiny_dataset, out)
    (path,) = (out / "data").glob("test-*.parquet")
    table = pq.read_table(path)
    images = table.column("image").to_pylist()
    images[3] = {"bytes": b"not an image", "path": images[3]["path"]}
    table = table.set_column(
        table.schema.get_field_index("image"), "image", pa.array(images, table.schema.field("image").type)
    )
    pq.write_table(table.replace_schema_metadata(table.schema.metadata), path)
    return out


def test_actor_killed_mid_run_gives_the_same_records(
    ray_local, tiny_model_dir, damaged_dataset, tmp_path, capsys, monkeypatch
):
    """An actor killed (SIGKILL) on its second batch is restarted and the batch retried: the records of the local
    engine; an unreadable image is named by its row, as the local engine names it, and the others predicted."""
    import datasets

    from geohf.inference.ray import GeoPredictorUDF, predict_split_ray

    # the datasets cache keys a local folder by its name and layout, not its bytes: the undamaged copy's is not
    # this one's
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    local_out = tmp_path / "local.parquet"
    argv = ["predict", "--model", str(tiny_model_dir), "--dataset", str(damaged_dataset), "--split", "test"]
    assert main([*argv, "--no-bf16", "--batch-size", "4", "--quiet", "--output", str(local_out)]) == 1
    local_error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(local_error) == 1 and local_error[0].startswith("error: test/3: ")
    marker = tmp_path / "killed"

    class KilledOnce(GeoPredictorUDF):
        def __call__(self, batch):
            if not marker.exists() and int(batch["row"][0]) >= 8:
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            return super().__call__(batch)

    out = tmp_path / "records"
    run = bounded(
        predict_split_ray, str(tiny_model_dir), str(damaged_dataset), str(out), "test", options=ray_options(),
        udf=KilledOnce,
    )  # fmt: skip
    assert marker.exists()  # the kill happened mid-run
    assert (run.predicted, run.images) == (19, 20)
    assert [f"error: {name}: {reason}" for name, reason in run.errors] == local_error
    assert_same_records(pd.read_parquet(out), pd.read_parquet(local_out), rows=19)


def test_evaluate_on_ray_equals_local(ray_local, tiny_model_dir, tiny_dataset, tmp_path, capsys):
    """``geohf evaluate --engine ray``: the metrics merged from per-batch accumulators are the local ones."""
    import json

    from geohf.data.folder import load_geo_dataset
    from geohf.evaluation.evaluation import Evaluation, evaluate

    local = evaluate(str(tiny_model_dir), load_geo_dataset(str(tiny_dataset)), bf16=False, batch_size=8)
    argv = ["evaluate", "--model", str(tiny_model_dir), "--dataset", str(tiny_dataset), "--output", str(tmp_path)]
    assert bounded(main, [*argv, "--no-bf16", "--batch-size", "4", "--engine", "ray", "--actors", "1"]) == 0
    printed = capsys.readouterr().out
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert list(written["results"]) == list(local.rows) == ["model", "geometric median", "random cell by frequency"]
    for method, metrics in local.rows.items():
        assert written["results"][method].keys() == metrics.keys()
        for key, value in metrics.items():
            assert written["results"][method][key] == pytest.approx(value, abs=1e-9), (method, key)
    assert local.table() in printed
    assert Evaluation("test", local.sizes, written["results"]).table() == local.table()


def test_embeddings_on_ray_equal_local(ray_local, tiny_model_dir, tiny_dataset):
    """``iter_ray_embeddings``: every row's embedding (within 1e-4), coordinates and cell, in row order."""
    from geohf.data.folder import load_geo_dataset
    from geohf.inference.predictor import GeoPredictor
    from geohf.inference.ray import iter_ray_embeddings
    from geohf.inference.retrieval import gallery_cells

    split = load_geo_dataset(str(tiny_dataset))["test"]
    predictor = GeoPredictor(str(tiny_model_dir), bf16=False, device="cpu", retrieval=False)
    local = predictor.predict_dataset(split, embeddings=True, retrieval=False, answer="cell", progress=False)

    def gather():
        return list(iter_ray_embeddings(str(tiny_model_dir), str(tiny_dataset), "test", options=ray_options()))

    batches = bounded(gather)
    rows = np.concatenate([b["row"] for b in batches])
    assert rows.tolist() == list(range(len(split)))
    # fp32 features of magnitude ~1 summed in another order (other batch size and thread count): ~2e-5 apart
    np.testing.assert_allclose(np.concatenate([b["embedding"] for b in batches]), local.embeddings, atol=1e-4)
    np.testing.assert_array_equal(np.concatenate([b["latitude"] for b in batches]), split["latitude"])
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), gallery_cells(predictor, split))


def test_missing_ray_is_one_line(tiny_model_dir, tiny_dataset, tmp_path):
    """Without Ray installed, ``--engine ray`` says how to install it, in one line."""
    code = (
        "import sys; sys.modules['ray'] = None; from geohf.cli import main; "
        f"sys.exit(main(['predict', '--model', {str(tiny_model_dir)!r}, '--dataset', {str(tiny_dataset)!r}, "
        f"'--engine', 'ray', '--output', {str(tmp_path / 'out')!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --engine ray needs Ray: pip install 'geohf[ray]'"


def test_ray_refuses_what_runs_locally(tiny_model_dir, tiny_dataset, tmp_path, capsys):
    """Files, maps and EXIF copies, --benchmark and --human stay with --engine local: one line each, before Ray."""
    model = ["--model", str(tiny_model_dir)]
    assert main(["predict", *model, "a.jpg", "--engine", "ray", "--output", str(tmp_path / "o")]) == 2
    assert "--engine ray predicts a dataset split (--dataset)" in capsys.readouterr().err
    argv = ["predict", *model, "--dataset", str(tiny_dataset), "--engine", "ray"]
    assert main(argv) == 2
    assert "pass --output FOLDER" in capsys.readouterr().err
    assert main([*argv, "--output", str(tmp_path / "o"), "--actors", "0"]) == 2
    assert "--actors must be at least 1" in capsys.readouterr().err
    argv = ["evaluate", *model, "--dataset", str(tiny_dataset), "--output", str(tmp_path), "--engine", "ray"]
    assert main([*argv, "--benchmark", "im2gps3k"]) == 2
    assert "--benchmark and --human run with --engine local" in capsys.readouterr().err


def test_index_build_on_ray_equals_local(ray_local, tiny_model_dir, tiny_dataset, tmp_path, capsys):
    """``geohf index build --engine ray``: the embeddings computed on Ray and streamed into the same writer give
    the local build's gallery (float16 embeddings within 1e-3, coordinates and cells equal)."""
    import shutil

    from geohf.inference.retrieval import GeoIndex

    galleries = {}
    for engine in ("local", "ray"):
        model = tmp_path / engine
        shutil.copytree(tiny_model_dir, model)
        shutil.rmtree(model / "index", ignore_errors=True)
        argv = ["index", "build", "--model", str(model), "--dataset", str(tiny_dataset), "--split", "test"]
        argv += ["--tune-split", "none", "--search", "exact", "--no-bf16", "--batch-size", "4", "--engine", engine]
        assert bounded(main, argv) == 0, capsys.readouterr().err
        galleries[engine] = GeoIndex.load(model / "index", embeddings=True)
    local, ray_index = galleries["local"], galleries["ray"]
    assert len(ray_index) == len(local) == 20
    np.testing.assert_allclose(ray_index.embeddings.float().numpy(), local.embeddings.float().numpy(), atol=1e-3)
    np.testing.assert_array_equal(ray_index.latitude, local.latitude)
    np.testing.assert_array_equal(ray_index.cell, local.cell)
    assert ray_index.info.search == local.info.search == "exact"
