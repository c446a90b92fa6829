"""Rebalancing countries ("mapping to a distribution" of a reference, or a cap per country), deterministic by seed.

Whole locations are selected, so all views of one place stay together.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from .skips import SkipLog


@dataclass
class BalanceSpec:
    """``reference:FILE[,min_share=0.0075][,slack=0.75]`` or ``cap:N``.

    * ``reference``: map the country distribution onto a reference distribution (a JSON
      ``{country_code: count or share}``): keep countries holding at least ``min_share``
      of the data, scale the reference down by the smallest available/reference ratio
      among them, and admit rarer countries that have at least ``slack`` of their scaled
      share (each keeps up to that share).
    * ``cap``: at most N locations per country.
    """

    kind: str
    params: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> BalanceSpec:
        kind, _, rest = text.partition(":")
        items = [i for i in rest.split(",") if i]
        if kind == "cap":
            if len(items) != 1 or not items[0].isdigit():
                raise UserError(f"--balance cap needs a number of locations per country, e.g. cap:500 (got {text!r})")
            return cls("cap", {"max_per_country": int(items[0])})
        if kind == "reference":
            if not items:
                raise UserError(
                    "--balance reference needs a JSON file: reference:counts.json[,min_share=..][,slack=..]"
                )
            params = {"path": items[0], "min_share": 0.0075, "slack": 0.75}
            for item in items[1:]:
                k, _, v = item.partition("=")
                params[k] = float(v)
            return cls("reference", params)
        raise UserError(f"unknown --balance {text!r}: use reference:FILE[,min_share=..,slack=..] or cap:N")


def _locations(frame: pd.DataFrame) -> pd.Series:
    return frame["location_id"].astype(str) if "location_id" in frame else pd.Series(frame.index.astype(str))


def _pick(frame: pd.DataFrame, targets: dict[str, int], seed: int, log: SkipLog, reason: str) -> pd.DataFrame:
    """Keep ``targets[country]`` random locations per country (all their views)."""
    loc = _locations(frame)
    per_loc = pd.DataFrame({"loc": loc, "cc": frame["country_code"]}).drop_duplicates("loc")
    rng = np.random.default_rng(seed)
    chosen = set()
    for cc, group in per_loc.groupby("cc", sort=True):
        n = targets.get(cc, 0)
        ids = group["loc"].to_numpy()
        chosen.update(ids[rng.permutation(ids.size)[:n]].tolist())
    keep = loc.isin(chosen).to_numpy()
    for item, cc in zip(frame["source_file"][~keep], frame["country_code"][~keep]):
        log.skip("balance", item, f"{reason} ({cc})")
    return frame[keep].reset_index(drop=True)


def map_to_reference(
    frame: pd.DataFrame, reference: dict[str, float], min_share: float, slack: float, seed: int, log: SkipLog
) -> pd.DataFrame:
    """Map the locations per country onto ``reference`` (see :class:`BalanceSpec`)."""
    counts = pd.Series(_locations(frame)).groupby(frame["country_code"].to_numpy()).nunique()
    total = counts.sum()
    ref = {cc: float(v) for cc, v in reference.items() if float(v) > 0}
    common = [cc for cc in counts.index if cc in ref]
    main = [cc for cc in common if counts[cc] / total >= min_share]
    if not main:
        raise UserError(f"no country has both ≥{min_share:.2%} of the data and an entry in the reference distribution")
    factor = min(counts[cc] / ref[cc] for cc in main)
    targets = {cc: math.ceil(ref[cc] * factor) for cc in main}
    for cc in set(common) - set(main):
        # a rarer country is admitted when it has at least ``slack`` of its share, and keeps up to its share
        # (all of its locations when it has no more than that)
        if counts[cc] / ref[cc] / factor >= slack:
            targets[cc] = min(int(counts[cc]), math.ceil(ref[cc] * factor))
    return _pick(frame, targets, seed, log, "over the reference distribution's share")


def balance(frame: pd.DataFrame, spec: BalanceSpec, seed: int, log: SkipLog) -> pd.DataFrame:
    """Apply a :class:`BalanceSpec`."""
    if spec.kind == "cap":
        cap = spec.params["max_per_country"]
        return _pick(
            frame, {cc: cap for cc in frame["country_code"].unique()}, seed, log, f"over {cap} locations per country"
        )
    reference = json.loads(Path(spec.params["path"]).read_text())
    return map_to_reference(frame, reference, spec.params["min_share"], spec.params["slack"], seed, log)
