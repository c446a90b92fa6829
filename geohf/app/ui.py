"""The Gradio app: a Predict tab and, with a dataset, the human-vs-model game.

Everything is served from this machine: analytics are off, fonts are local, maps are
matplotlib images (the interactive folium map is offered as a download), and the
server binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from ..geo.countries import country_name  # noqa: E402
from ..images import ImageLoadError  # noqa: E402
from ..inference.maps import MapPoint, prediction_map, save_map  # noqa: E402
from ..inference.predictor import GeoPredictor  # noqa: E402
from .figures import click_to_latlon, clickable_world_map, place_figure  # noqa: E402
from .game import Game, Guess, country_choices, scoreboard  # noqa: E402
from .prediction import PlacePrediction, predict_place  # noqa: E402

CACHE_AGE_S = 3600  # the app's files (gradio's copies of uploads and maps, our HTML maps) are kept this long
SCOREBOARD_HEADERS = ["who", "rounds", "country top-1 %", "country top-5 %", "mean km", "GeoScore"]


def _summary(record: dict[str, Any]) -> str:
    lines = [
        f"**{record['pred_region'] or record['pred_country']}, {record['pred_country']}**"
        + ("" if record.get("score") is None else f" ({100 * record['score']:.1f}% top cell)"),
        f"coordinates **{record['pred_latitude']:.4f}, {record['pred_longitude']:.4f}**",
    ]
    if record.get("radius_km") is not None:
        lines.append(f"50% of the probability within **{record['radius_km']:,.0f} km**")
    if record.get("error_km") is not None:
        lines.append(f"EXIF GPS {record['exif_latitude']:.4f}, {record['exif_longitude']:.4f}: "
                     f"error **{record['error_km']:,.0f} km**")  # fmt: skip
    return "  \n".join(lines)


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def _round_table(record: dict[str, Any]) -> str:
    truth = record["true_country_code"]
    rows = [
        f"Truth: **{country_name(truth)}** at {record['true_latitude']:.3f}, {record['true_longitude']:.3f}",
        "",
        "| | countries | top-1 | top-5 | km | GeoScore |",
        "|---|---|:-:|:-:|--:|--:|",
    ]
    for who in ("player", "model"):
        names = ", ".join(country_name(c) for c in record[f"{who}_countries"]) or "-"
        km, score = record[f"{who}_km"], record[f"{who}_geoscore"]
        rows.append(
            f"| {'you' if who == 'player' else 'model'} | {names} | {_mark(record[f'{who}_country_correct'])} "
            f"| {_mark(record[f'{who}_country_top5_correct'])} | {'-' if km is None else f'{km:,.0f}'} "
            f"| {'-' if score is None else f'{score:,.0f}'} |"
        )
    return "\n".join(rows)


class GeoApp:
    """The app's callbacks, independent of the widgets (testable without a browser)."""

    def __init__(self, predictor: GeoPredictor, game: Game | None = None, workdir: str | None = None, top_k: int = 5):
        self.predictor, self.game, self.top_k = predictor, game, top_k
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="geohf-app-"))
        self.world_map = clickable_world_map(self.workdir / "world.png")

    # ------------------------------------------------------------ predict tab
    def predict(self, files: list[str] | None):
        """Uploaded images (several: views of one place) → map, summary, countries, regions, record, HTML map."""
        if not files:
            raise gr.Error("Upload at least one image.")
        paths = [f if isinstance(f, str) else f.name for f in files]
        try:
            place: PlacePrediction = predict_place(self.predictor, paths, self.top_k)
        except ImageLoadError as err:
            raise gr.Error(f"{Path(err.path).name}: {err.reason}") from err
        record = place.record
        truth = (record["exif_latitude"], record["exif_longitude"]) if "exif_latitude" in record else None
        figure = place_figure(self.predictor.cells, place.probs, record, {"truth": truth}, place.likelihood)
        self.sweep()
        html = self.workdir / f"map-{uuid.uuid4().hex[:8]}.html"
        fmap = prediction_map(
            [MapPoint.from_record(record)], self.predictor.cells, place.probs, likelihood=place.likelihood
        )
        save_map(fmap, html)
        return figure, _summary(record), place.countries, place.regions, record, str(html)

    def sweep(self, age_s: float = CACHE_AGE_S) -> int:
        """Delete this app's HTML maps older than ``age_s`` (Gradio serves its own copy): how many.
        A server up for days keeps a bounded work folder."""
        cutoff, removed = time.time() - age_s, 0
        for old in self.workdir.glob("map-*.html"):
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink()
                    removed += 1
            except FileNotFoundError:  # another request swept it
                pass
        return removed

    # ------------------------------------------------------------ game tab
    def next_round(self, state: dict | None):
        """Show the next image of this player's session."""
        state = dict(state or {"session": uuid.uuid4().hex[:12], "round": -1, "rounds": []})
        state["round"] += 1
        state["row"], state["answered"] = self.game.row(state["round"]), False
        message = f"Round {state['round'] + 1}: where is this? Name up to 5 countries and/or click the map."
        return self.game.image(state["row"]), message, state

    def guess(self, countries: list[str] | None, latitude, longitude, player: str, state: dict | None):
        """Score the player and the model on the current image; append the round to the results file."""
        if not state or "row" not in state:
            raise gr.Error("Start a round first (New round).")
        if state.get("answered"):
            raise gr.Error("This round is already scored: start a new round.")
        has_coordinates = latitude is not None and longitude is not None
        if not countries and not has_coordinates:
            raise gr.Error("Name at least one country or give coordinates.")
        if has_coordinates and not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
            raise gr.Error("Latitude must be in [-90, 90] and longitude in [-180, 180].")
        guess = Guess(list(countries or [])[:5], *((float(latitude), float(longitude)) if has_coordinates else ()))
        record, place = self.game.play(state["row"], guess, player=(player or "").strip(), session=state["session"])
        state = {**state, "answered": True, "rounds": [*state["rounds"], record]}
        points = {
            "truth": (record["true_latitude"], record["true_longitude"]),
            "player": (guess.latitude, guess.longitude),
        }
        figure = place_figure(self.predictor.cells, place.probs, place.record, points)
        return _round_table(record), figure, scoreboard(state["rounds"]), state

    def click(self, evt: gr.SelectData) -> tuple[float, float]:
        """A click on the world map → latitude, longitude."""
        from PIL import Image

        with Image.open(self.world_map) as im:
            width, height = im.size
        return click_to_latlon(evt.index[0], evt.index[1], width, height)


def build_app(app: GeoApp, title: str = "geohf"):
    """The Gradio Blocks for ``app``: a Predict tab, and a Game tab when it has a game."""
    # delete_cache: Gradio copies every upload and returned file into its cache and keeps them for good
    # unless told; every 10 minutes, files older than CACHE_AGE_S go
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(600, CACHE_AGE_S)) as demo:
        gr.Markdown(f"# {title}: where was this photo taken?")
        with gr.Tab("Predict"):
            files = gr.File(
                file_count="multiple",
                file_types=["image", ".heic", ".heif"],
                label="images (several = views of one place)",
            )
            run = gr.Button("Predict", variant="primary")
            with gr.Row():
                plot = gr.Plot(
                    label="map: cells sized by probability (a flow head: its likelihood shaded), "
                    "★ prediction with its 50% radius"
                )
                with gr.Column():
                    summary = gr.Markdown()
                    countries = gr.Label(num_top_classes=app.top_k, label="countries")
                    regions = gr.Label(num_top_classes=app.top_k, label="regions")
            with gr.Accordion("details", open=False):
                details = gr.JSON(label="prediction")
                html = gr.File(label="interactive map (HTML; needs a network connection to show tiles)")
            run.click(app.predict, [files], [plot, summary, countries, regions, details, html], api_name="predict")
        if app.game is not None:
            with gr.Tab("Game: you vs the model"):
                state = gr.State(None)
                with gr.Row():
                    with gr.Column():
                        image = gr.Image(label="where is this?", interactive=False, height=320)
                        start = gr.Button("New round")
                        status = gr.Markdown()
                    with gr.Column():
                        player = gr.Textbox(label="your name (saved with your guesses)")
                        guess_countries = gr.Dropdown(
                            country_choices(), multiselect=True, max_choices=5, label="countries (first = top-1 guess)"
                        )
                        world = gr.Image(str(app.world_map), interactive=False, label="click to guess coordinates")
                        with gr.Row():
                            lat = gr.Number(label="latitude")
                            lon = gr.Number(label="longitude")
                        submit = gr.Button("Guess", variant="primary")
                result = gr.Markdown()
                with gr.Row():
                    reveal = gr.Plot(label="truth, your guess and the model's")
                    board = gr.Dataframe(headers=SCOREBOARD_HEADERS, label="this session", interactive=False)
                start.click(app.next_round, [state], [image, status, state], api_name="next_round")
                world.select(app.click, None, [lat, lon], api_name=False)
                submit.click(
                    app.guess,
                    [guess_countries, lat, lon, player, state],
                    [result, reveal, board, state],
                    api_name="guess",
                )
    return demo


def serve(
    demo,
    host: str = "127.0.0.1",
    port: int | None = None,
    max_file_size: str = "20mb",
    block: bool = True,
    announce: bool | None = None,
    max_sessions: int = 100,
):
    """Launch offline: no share link, no analytics, no server-side rendering, uploads capped at ``max_file_size``.

    Gradio keeps each browser session's state (a copy of the app's configuration, a few MB, and the
    game's round) in memory; ``max_sessions`` caps how many: the least recently used is dropped
    beyond it (its game round restarts), so memory stays bounded however many people visit.

    Gradio's own start-up lines are silenced (their ``share=True`` hint is no option of ``geohf app``); with
    ``announce`` (default: when blocking) one line says where the app is and who can reach it.
    """
    result = demo.queue(default_concurrency_limit=1).launch(
        server_name=host,
        server_port=port,
        share=False,
        max_file_size=max_file_size,
        ssr_mode=False,
        show_error=True,
        prevent_thread_lock=True,
        quiet=True,
        state_session_capacity=max_sessions,
    )
    if block if announce is None else announce:
        local = host in ("127.0.0.1", "localhost", "::1")
        reach = "this machine only" if local else f"anyone who can reach {host}"
        print(f"geohf app: serving on {demo.local_url} ({reach}; Ctrl-C to stop)", flush=True)
    if block:
        demo.block_thread()
    return result
