"""The human-baseline game (GeoGuessr-style): player and model guess the same images, scored alike.

Rounds walk a dataset split in a seeded random order. The player names up to five
countries (the first is the top-1 guess) and may give coordinates (typed or clicked);
the model's guess is its prediction for the same image. Both are scored on country
top-1 / top-5, great-circle km and GeoScore, and every round becomes one line of the
results file (:mod:`geohf.app.results`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..evaluation.human import summarise_rows
from ..evaluation.metrics import geoscore
from ..geo.countries import all_country_codes, country_name
from ..geo.sphere import haversine_km
from ..inference.inputs import DatasetItems, load_split
from ..inference.photos import load_image
from ..inference.predictor import GeoPredictor
from .prediction import PlacePrediction, predict_item
from .results import append_result

GAME_COLUMNS = ("latitude", "longitude", "country_code")


@dataclass
class Guess:
    """A guess of one place: countries (ISO codes, best first) and, optionally, coordinates."""

    countries: list[str] = field(default_factory=list)
    latitude: float | None = None
    longitude: float | None = None

    @property
    def has_coordinates(self) -> bool:
        return self.latitude is not None and self.longitude is not None


def score_guess(guess: Guess, latitude: float, longitude: float, country_code: str) -> dict[str, Any]:
    """Country top-1 / top-5 hits, km and GeoScore (distance fields ``None`` without coordinates)."""
    km = None
    if guess.has_coordinates:
        km = round(float(haversine_km(latitude, longitude, guess.latitude, guess.longitude)), 1)
    return {
        "countries": list(guess.countries[:5]),
        "latitude": guess.latitude,
        "longitude": guess.longitude,
        "country_correct": bool(guess.countries) and guess.countries[0] == country_code,
        "country_top5_correct": country_code in guess.countries[:5],
        "km": km,
        "geoscore": None if km is None else round(geoscore([km]), 1),
    }


def country_choices() -> list[tuple[str, str]]:
    """(name, ISO code) for every country, sorted by name, for a dropdown."""
    return sorted(((f"{country_name(c)} ({c})", c) for c in all_country_codes()), key=lambda x: x[0])


class Game:
    """Rounds on one dataset split for a model.

    Args:
        predictor: the model.
        dataset: a dataset folder or Hub repo id with ``latitude, longitude, country_code`` columns.
        split, image_column: where the images are.
        results: the results file every round is appended to (``None``: not recorded).
        seed: order of the rounds (the same for every player with the same seed).
    """

    def __init__(
        self,
        predictor: GeoPredictor,
        dataset: str,
        split: str = "test",
        image_column: str = "image",
        results: str | None = None,
        seed: int = 0,
        model_name: str = "",
    ):
        data = load_split(dataset, split)
        missing = [c for c in GAME_COLUMNS if c not in data.column_names]
        if missing:
            raise ValueError(f"{dataset} [{split}] has no {missing} columns; the game needs {list(GAME_COLUMNS)}")
        if len(data) == 0:
            raise ValueError(f"{dataset}: split {split!r} is empty; nothing to play")
        self.predictor, self.results, self.model_name = predictor, results, model_name
        self.dataset, self.split = dataset, split
        self.items = DatasetItems(data, image_column, prefix=f"{split}/")
        self.truth = data.select_columns(list(GAME_COLUMNS)).to_pandas()
        self.order = np.random.default_rng(seed).permutation(len(data))

    def __len__(self) -> int:
        return len(self.order)

    def row(self, round_number: int) -> int:
        """The dataset row shown in round ``round_number`` (wrapping around)."""
        return int(self.order[round_number % len(self.order)])

    def image(self, row: int) -> Image.Image:
        ref = self.items[row].images[0]
        return load_image(ref.name, ref.data).image

    def play(
        self, row: int, guess: Guess, player: str = "", session: str = ""
    ) -> tuple[dict[str, Any], PlacePrediction]:
        """Score the player's and the model's guesses of ``row``; append the round to the results file.

        Returns the round's record (one results-file line) and the model's prediction.
        """
        truth = self.truth.iloc[row]
        lat, lon, code = float(truth["latitude"]), float(truth["longitude"]), str(truth["country_code"])
        place = predict_item(self.predictor, self.items[row])
        model = Guess(place.country_codes, place.record["pred_latitude"], place.record["pred_longitude"])
        record = {
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "session": session,
            "player": player,
            "dataset": self.dataset,
            "split": self.split,
            "row": row,
            "model": self.model_name,
            "true_latitude": lat,
            "true_longitude": lon,
            "true_country_code": code,
        }
        for who, g in (("player", guess), ("model", model)):
            record.update({f"{who}_{k}": v for k, v in score_guess(g, lat, lon, code).items()})
        if self.results is not None:
            append_result(self.results, record)
        return record, place


def scoreboard(rounds: list[dict[str, Any]]) -> list[list[Any]]:
    """Rows ``[who, rounds, country %, top-5 %, mean km, GeoScore]`` for the player and the model."""
    table = []
    for who in ("player", "model"):
        if not rounds:
            table.append([who, 0, None, None, None, None])
            continue
        m = summarise_rows(rounds, who)
        km = [round(m[k], 1) if k in m else None for k in ("mean_km", "geoscore")]
        table.append([who, len(rounds), round(m["country_accuracy"], 1), round(m["country_top5_accuracy"], 1), *km])
    return table
