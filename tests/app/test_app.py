"""The Gradio app, headless: one prediction and one game round through gradio_client; the results file."""

import argparse
import json
import os
import socket
import threading
from pathlib import Path

import pytest

from geohf.app import append_result
from geohf.app.figures import circle_latlon, click_to_latlon
from geohf.app.game import Guess, score_guess
from geohf.app.prediction import predict_item
from geohf.commands.app import register_subcommand
from geohf.evaluation.human import summarise_results
from geohf.evaluation.metrics import geoscore
from geohf.geo.sphere import haversine_km

TABLE_KEYS = {"country_accuracy", "mean_km", "median_km", "within_25km", "within_750km", "geoscore"}


def row(truth="FR", player=("FR",), km=100.0, model=("DE", "FR"), model_km=500.0):
    return {
        "true_country_code": truth,
        "player_countries": list(player),
        "player_km": km,
        "model_countries": list(model),
        "model_km": model_km,
    }


def test_score_guess_top1_top5_km_and_geoscore():
    s = score_guess(Guess(["DE", "FR"], 48.0, 2.0), 48.8566, 2.3522, "FR")
    assert not s["country_correct"] and s["country_top5_correct"]
    assert s["km"] == pytest.approx(float(haversine_km(48.8566, 2.3522, 48.0, 2.0)), abs=0.1)
    assert s["geoscore"] == pytest.approx(geoscore([s["km"]]), abs=0.1)
    countries_only = score_guess(Guess(["FR"]), 48.8566, 2.3522, "FR")
    assert countries_only["country_correct"] and countries_only["km"] is None and countries_only["geoscore"] is None


def test_results_file_appends_atomically_and_summarises(tmp_path):
    path = tmp_path / "results.jsonl"
    rows = [row(), row(truth="ES", km=None), row(truth="IT", player=("FR", "ES", "IT"), km=2000.0)]
    threads = [threading.Thread(target=append_result, args=(path, r)) for r in rows * 20]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 60 and all(json.loads(line) for line in lines)
    with open(path, "a") as f:
        f.write('{"broken": \n')
    with pytest.warns(UserWarning, match="skipped 1"):
        human = summarise_results(path)
    assert set(human) >= TABLE_KEYS
    assert human["n"] == 60 and human["n_km"] == 40 and human["skipped_lines"] == 1
    assert human["country_accuracy"] == pytest.approx(100 / 3)
    assert human["country_top5_accuracy"] == pytest.approx(200 / 3)
    assert human["mean_km"] == pytest.approx(1050.0) and human["within_750km"] == pytest.approx(50.0)
    with pytest.warns(UserWarning):
        model = summarise_results(path, who="model")
    assert model["country_accuracy"] == 0.0 and model["country_top5_accuracy"] == pytest.approx(100 / 3)


def test_click_map_geometry():
    assert click_to_latlon(0, 0, 1000, 500) == (90.0, -180.0)
    assert click_to_latlon(500, 250, 1000, 500) == (0.0, 0.0)
    assert click_to_latlon(750, 125, 1000, 500) == (45.0, 90.0)
    lat, lon = circle_latlon(10.0, 170.0, 1000.0)
    assert haversine_km(10.0, 170.0, lat, lon) == pytest.approx(1000.0, rel=1e-6)
    assert (lon >= -180).all() and (lon < 180).all()


def test_parser_binds_locally_by_default():
    parser = argparse.ArgumentParser(prog="geohf")
    register_subcommand(parser.add_subparsers())
    args = parser.parse_args(["app", "--model", "m"])
    assert args.host == "127.0.0.1" and args.max_file_size and args.dataset is None and callable(args.func)


@pytest.fixture(scope="module")
def app_server(tiny_model_dir, tiny_dataset, tmp_path_factory):
    """The app with a game on the tiny dataset, served on a free port of 127.0.0.1 (connections recorded)."""
    import gradio  # noqa: F401 - imported before recording connections

    from geohf.app.game import Game
    from geohf.app.ui import GeoApp, build_app, serve
    from geohf.inference.predictor import GeoPredictor

    results = tmp_path_factory.mktemp("game") / "human.jsonl"
    predictor = GeoPredictor(str(tiny_model_dir), bf16=False)
    game = Game(predictor, str(tiny_dataset), "test", results=str(results), seed=0, model_name="tiny")
    geo_app = GeoApp(predictor, game, workdir=str(tmp_path_factory.mktemp("app")))
    demo = build_app(geo_app)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve(demo, port=port, max_file_size="200kb", block=False)
    yield {"url": f"http://127.0.0.1:{port}/", "results": results, "game": game, "demo": demo, "geo_app": geo_app}
    demo.close()


@pytest.fixture
def connections(monkeypatch):
    """Every address a socket in this process connects to."""
    seen = []
    connect = socket.socket.connect

    def record(self, address):
        seen.append(address)
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", record)
    return seen


def test_app_predicts_and_plays_a_round_headless(app_server, tiny_dataset, tmp_path, connections):
    from datasets import load_dataset
    from gradio_client import Client, handle_file

    assert app_server["demo"].server_name == "127.0.0.1"
    client = Client(app_server["url"], verbose=False)
    tile = tmp_path / "tile.png"
    test = load_dataset(str(tiny_dataset), split="test")
    test[0]["image"].save(tile)

    figure, summary, countries, regions, record, html_map = client.predict(
        [handle_file(str(tile))], api_name="/predict"
    )
    assert -90 <= record["pred_latitude"] <= 90 and record["radius_km"] > 0 and len(record["top_k"]) == 5
    assert "coordinates" in summary and figure
    assert countries["label"] and sum(c["confidence"] for c in countries["confidences"]) <= 1.0 + 1e-6
    assert regions["confidences"]
    assert "L.circle(" in Path(html_map).read_text()

    image, message = client.predict(api_name="/next_round")
    assert image and message.startswith("Round 1")
    result, reveal, board, *_ = client.predict(["FR", "US"], 10.0, 20.0, "alice", api_name="/guess")
    assert "Truth:" in result and "| you |" in result and "| model |" in result
    assert [r[0] for r in board["data"]] == ["player", "model"]

    (line,) = app_server["results"].read_text().splitlines()
    saved = json.loads(line)
    row = app_server["game"].row(0)
    truth = test[row]
    assert saved["row"] == row and saved["player"] == "alice" and saved["player_countries"] == ["FR", "US"]
    assert saved["true_country_code"] == truth["country_code"]
    expected = float(haversine_km(truth["latitude"], truth["longitude"], 10.0, 20.0))
    assert saved["player_km"] == pytest.approx(expected, abs=0.1)
    # the model's countries are its own ranking for that image (the one `geohf evaluate` scores at top-1)
    game = app_server["game"]
    ranking = predict_item(game.predictor, game.items[row]).country_codes
    assert saved["model_countries"] == ranking and len(ranking) >= 1
    assert board["data"][0][4] == pytest.approx(saved["player_km"], abs=0.1)
    human = summarise_results(app_server["results"])
    assert human["n"] == 1 and human["mean_km"] == pytest.approx(saved["player_km"])

    with pytest.raises(Exception, match="already scored"):
        client.predict(["FR"], None, None, "alice", api_name="/guess")
    big = tmp_path / "big.png"
    big.write_bytes(tile.read_bytes() + b"\0" * 300_000)
    with pytest.raises(Exception):  # noqa: B017 - gradio_client raises its own error types for a refused upload
        client.predict([handle_file(str(big))], api_name="/predict")
    assert len(app_server["results"].read_text().splitlines()) == 1

    hosts = {a[0] for a in connections if isinstance(a, tuple)}
    assert hosts <= {"127.0.0.1", "localhost", "::1"}, f"the app or client reached out: {hosts}"


def test_the_app_keeps_a_bounded_work_folder_and_cache(app_server, tmp_path):
    """A server up for days: its HTML maps older than the cache age are swept, and Gradio is told to
    delete its copies of uploads and returned files (it keeps them for good otherwise)."""
    import time

    from geohf.app.ui import CACHE_AGE_S

    assert app_server["demo"].delete_cache == (600, CACHE_AGE_S)
    geo_app = app_server["geo_app"]
    old, fresh = geo_app.workdir / "map-old.html", geo_app.workdir / "map-fresh.html"
    old.write_text("x"), fresh.write_text("x")
    os.utime(old, (time.time() - CACHE_AGE_S - 5,) * 2)
    keep = geo_app.world_map
    assert geo_app.sweep() == 1
    assert not old.exists() and fresh.exists() and keep.exists()


def test_serve_says_where_without_gradios_share_hint(capfd):
    import gradio as gr

    from geohf.app.ui import serve

    with gr.Blocks() as demo:
        gr.Markdown("hello")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        serve(demo, port=port, block=False, announce=True)
    finally:
        demo.close()
    out = capfd.readouterr()
    text = out.out + out.err
    assert f"geohf app: serving on http://127.0.0.1:{port}/ (this machine only" in text
    assert "share=True" not in text and "public link" not in text


def test_sessions_beyond_max_sessions_are_dropped():
    """``--max-sessions``: per-session state (gradio keeps a copy of the app's config per session) is capped,
    the least recently used dropped, so visitors cannot grow the server's memory without bound."""
    import gradio as gr
    from gradio_client import Client

    from geohf.app.ui import serve

    with gr.Blocks() as demo:
        state = gr.State(0)
        out = gr.Number()
        gr.Button("count").click(lambda n: (n + 1, n + 1), state, [state, out], api_name="count")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        serve(demo, port=port, block=False, max_sessions=3)
        clients = [Client(f"http://127.0.0.1:{port}/", verbose=False) for _ in range(6)]
        assert [c.predict(api_name="/count") for c in clients] == [1] * 6
        assert len(demo.state_holder.session_data) == 3  # the three most recent sessions only
        assert clients[-1].predict(api_name="/count") == 2  # a kept session keeps its state
        assert clients[0].predict(api_name="/count") == 1  # a dropped one starts over
    finally:
        demo.close()


def test_a_figure_per_request_leaves_nothing_behind():
    """The app draws a world map per prediction: drawing more of them adds no classes and no legend handlers
    (geopandas' ``GeoDataFrame.plot`` made a collection class per call and registered it with matplotlib's
    legend for good: the app under load grew by ~1 MB per 2 predictions)."""
    import gc

    import numpy as np
    from matplotlib.legend import Legend

    from geohf.app.figures import place_figure
    from geohf.inference.predictions import CellTable

    empty = np.array(["", ""], dtype=object)
    cells = CellTable(["a", "b"], np.array([1.0, 2.0]), np.array([3.0, 4.0]), empty, empty, empty, empty)
    record = {"pred_latitude": 10.0, "pred_longitude": 20.0, "radius_km": 500.0}

    def draw():
        place_figure(cells, np.array([0.3, 0.7]), record, {"truth": (1.0, 2.0)}).savefig(Path(os.devnull), format="png")

    def classes() -> int:
        gc.collect()
        return sum(isinstance(o, type) for o in gc.get_objects())

    draw()
    handlers, before = len(Legend.get_default_handler_map()), classes()
    for _ in range(5):
        draw()
    assert len(Legend.get_default_handler_map()) == handlers
    assert classes() == before


@pytest.fixture(scope="module")
def flow_predictor():
    """A tiny random flow model in memory (loose ODE tolerances: a few dozen steps per likelihood grid)."""
    import torch

    from geohf import create_model
    from geohf.inference.predictor import GeoPredictor
    from geohf.modeling.configuration_geohf import HeadSpec

    torch.manual_seed(0)
    sizes = {"dim": 16, "depth": 1, "expansion": 2, "steps": 5, "samples": 3, "atol": 1e-4, "rtol": 1e-4}
    model = create_model(heads=[HeadSpec(name="flow", type="flow", flow=sizes)], pretrained=None, image_size=32)
    return GeoPredictor(model.eval(), bf16=False, channels_last=False)


def photos(folder: Path, n: int) -> list[str]:
    """``n`` random photos, each darker than the last."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = [str(folder / f"{i}.png") for i in range(n)]
    for i, path in enumerate(paths):
        Image.fromarray(rng.integers(0, 255 // (1 + 3 * i), (40, 48, 3), dtype=np.uint8)).save(path)
    return paths


def shaded_grids(figure) -> list:
    """The grids shaded on the world map (its colour bar, another axes, draws one of its own)."""
    from matplotlib.collections import QuadMesh

    return [c for c in figure.axes[0].collections if isinstance(c, QuadMesh)]


def test_predict_tab_shades_a_flow_heads_likelihood_grid(flow_predictor, tiny_model_dir, tmp_path, monkeypatch):
    """A flow model's Predict tab: its likelihood grid (computed once per request, every 10°) shaded on the map and
    on the HTML map, the point and radius as for any model; several views: the mixture of theirs. A cell model's
    map has no grid."""
    import numpy as np
    from PIL import Image

    from geohf.app.prediction import LIKELIHOOD_DEG
    from geohf.app.ui import GeoApp
    from geohf.inference.maps import flow_likelihood
    from geohf.inference.predictor import GeoPredictor

    head = flow_predictor.model.heads["flow"]
    grid_of = head.likelihood_grid
    calls = []
    monkeypatch.setattr(head, "likelihood_grid", lambda *a, **k: calls.append(a) or grid_of(*a, **k))
    (tmp_path / "flow").mkdir(), (tmp_path / "cells").mkdir()
    geo_app = GeoApp(flow_predictor, workdir=str(tmp_path / "flow"))
    paths = photos(tmp_path, 2)
    figure, summary, _, _, record, html_map = geo_app.predict(paths[:1])
    assert len(calls) == 1 and calls[0][1] == LIKELIHOOD_DEG == 10.0
    assert "coordinates" in summary and "top cell" not in summary and record["radius_km"] > 0
    (mesh,) = shaded_grids(figure)
    shown = mesh.get_array()
    assert shown.shape == (19, 37) and shown.count() > 0 and np.isfinite(shown.compressed()).all()
    ax = figure.axes[0]
    assert any(line.get_label() == "model" for line in ax.collections)  # the predicted point, as before
    assert len(ax.lines) > 0  # its 50% radius
    assert figure.axes[1].get_ylabel() == "log-density per sr"
    page = Path(html_map).read_text()
    assert "log-density" in page and page.count("L.rectangle") > 10

    calls.clear()
    figure, *_ = geo_app.predict(paths)  # two views of one place
    assert len(calls) == 2
    (mesh,) = shaded_grids(figure)
    views = [flow_likelihood(flow_predictor, Image.open(p), 10.0).log_density for p in paths]
    # two places: the mixture is neither view's grid (far apart next to the ODE's tolerance, 1e-4: a grid computed
    # in another batch takes other adaptive steps, measured up to 7e-4 apart)
    assert np.abs(views[0] - views[1]).max() > 0.01  # measured 0.017: the mixture lies ~0.008 from either view
    mixture = np.logaddexp(*views) - np.log(2)
    shown = mesh.get_array()
    assert shown.count() > 0
    np.testing.assert_allclose(shown.compressed(), mixture[~np.ma.getmaskarray(shown)], rtol=0, atol=2e-3)

    cell_app = GeoApp(GeoPredictor(str(tiny_model_dir), bf16=False), workdir=str(tmp_path / "cells"))
    figure, summary, *_, html_map = cell_app.predict(paths[:1])
    assert shaded_grids(figure) == [] and len(figure.axes) == 1 and "top cell" in summary
    assert "log-density" not in Path(html_map).read_text()
