"""Train / validation / test splits that keep places apart, deterministic by seed."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from ..errors import UserError
from ..geo.sphere import EARTH_RADIUS_KM, latlon_to_xyz
from .names import SPLIT_BY
from .skips import SkipLog

SPLITS = ("train", "validation", "test")


def split_groups(groups: pd.Series, fractions: tuple[float, ...], seed: int) -> np.ndarray:
    """Split name per row such that each group lands in one split, by image count.

    Groups are shuffled with ``seed`` and cut where the cumulative share of images
    crosses the fractions.
    """
    return np.asarray(SPLITS, dtype=object)[_group_splits(groups, fractions, seed)]


def _group_splits(groups: pd.Series, fractions: tuple[float, ...], seed: int) -> np.ndarray:
    """:func:`split_groups` as the index into :data:`SPLITS` per row (int8)."""
    codes, uniques = pd.factorize(groups, sort=True)
    return split_codes(codes, len(uniques), fractions, seed)


def split_codes(codes: np.ndarray, n_groups: int, fractions: tuple[float, ...], seed: int) -> np.ndarray:
    """:func:`split_groups` on groups given as codes: ``codes[i]`` is row ``i``'s group's rank among the
    ``n_groups`` groups in sorted order. Returns the index into :data:`SPLITS` per row (int8)."""
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.size != 3 or (fractions < 0).any() or fractions.sum() <= 0:
        raise UserError(f"fractions must be three non-negative numbers (train, validation, test), got {fractions}")
    sizes = np.bincount(codes, minlength=n_groups)
    order = np.random.default_rng(seed).permutation(n_groups)
    cum = np.cumsum(sizes[order]) / sizes.sum()
    del sizes
    bounds = np.cumsum(fractions / fractions.sum())
    split_of_group = np.empty(n_groups, dtype=np.int8)
    split_of_group[order] = np.searchsorted(bounds[:-1], cum - 1e-12, side="right")
    return split_of_group[codes]


def row_number_ranks(n: int) -> np.ndarray:
    """The rank of each row number's decimal text among those of ``0 .. n-1`` (what ``pd.factorize`` of
    ``str(i)`` with ``sort=True`` gives: "10" before "2"), computed on the numbers: no string per row."""
    numbers = np.arange(n, dtype=np.int64)
    digits = np.ones(n, dtype=np.int8)
    for d in range(1, len(str(max(n - 1, 0)))):
        digits += numbers >= 10**d
    width = int(digits.max()) if n else 1
    padded = numbers * 10 ** (width - digits.astype(np.int64))  # "7" -> 700, "70" -> 700, then the shorter first
    order = np.lexsort((digits, padded))
    del numbers, padded, digits
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(n, dtype=np.int64)
    return ranks


def stable_unit(keys, salt: str = "") -> np.ndarray:
    """A number in [0, 1) per key from a hash of ``salt`` and the key's text: the same on every machine,
    whatever the order or company the key comes in (``hash()`` is salted per process, so not that)."""
    out = np.empty(len(keys), dtype=np.float64)
    for i, key in enumerate(keys):
        digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0**64
    return out


def hash_split_groups(groups: pd.Series, fractions: tuple[float, ...], seed: int) -> np.ndarray:
    """Split name per row from a hash of ``seed`` and the row's group: each group lands in one split,
    and a group's split depends on nothing else (not on the other rows, their order or which machine
    builds it), so the shards of ``--shard K/N`` agree. Shares are met in expectation, by group count
    (binomial noise: ±0.1 points at 1M groups), where :func:`split_groups` cuts them exactly by image count.
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.size != 3 or (fractions < 0).any() or fractions.sum() <= 0:
        raise UserError(f"fractions must be three non-negative numbers (train, validation, test), got {fractions}")
    codes, uniques = pd.factorize(groups.astype(str))
    bounds = np.cumsum(fractions / fractions.sum())
    split_of_group = np.searchsorted(bounds[:-1], stable_unit(uniques, f"split:{seed}"), side="right")
    return np.asarray(SPLITS, dtype=object)[split_of_group[codes]]


def block_ids(lat: np.ndarray, lon: np.ndarray, block_deg: float) -> pd.Series:
    """Id of the ``block_deg`` × ``block_deg`` latitude/longitude block of each point."""
    i = np.floor((np.asarray(lat) + 90.0) / block_deg).astype(np.int64)
    j = np.floor((np.asarray(lon) + 180.0) / block_deg).astype(np.int64)
    return pd.Series(i * 100_000 + j)


def drop_near_train(frame: pd.DataFrame, buffer_km: float, log: SkipLog) -> pd.DataFrame:
    """Drop validation/test rows closer than ``buffer_km`` to any training row (counted)."""
    from scipy.spatial import cKDTree

    if buffer_km <= 0:
        return frame
    train = frame["split"] == "train"
    if train.all() or not train.any():
        return frame
    xyz = latlon_to_xyz(frame["latitude"].to_numpy(), frame["longitude"].to_numpy())
    chord = 2 * np.sin(buffer_km / EARTH_RADIUS_KM / 2)
    dist, _ = cKDTree(xyz[train.to_numpy()]).query(xyz[~train.to_numpy()], distance_upper_bound=chord)
    near = np.zeros(len(frame), bool)
    near[np.flatnonzero(~train.to_numpy())[np.isfinite(dist)]] = True
    for item, split in zip(frame["source_file"][near], frame["split"][near]):
        log.skip("split", item, f"{split} image within {buffer_km:g} km of a training image")
    return frame[~near].reset_index(drop=True)


def assign_splits(
    frame: pd.DataFrame,
    by: str = "location",
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    block_deg: float = 1.0,
    buffer_km: float = 0.0,
    log: SkipLog | None = None,
    hashed: bool = False,
) -> pd.DataFrame:
    """Add a ``split`` column.

    Args:
        by: ``location`` — all images of one ``location_id`` (or each image alone) share a
            split; ``block`` — all images in one ``block_deg`` latitude/longitude block do.
        buffer_km: afterwards drop validation/test images this close to a training image.
        hashed: split by a hash of each group (:func:`hash_split_groups`, what sharded builds use)
            instead of one seeded permutation of all groups; an image alone is then keyed by its
            ``source_file``, not its row number.
    """
    if by not in SPLIT_BY:
        raise UserError(f"--split-by must be {' or '.join(map(repr, SPLIT_BY))}, got {by!r}")
    if by == "block":
        groups = block_ids(frame["latitude"].to_numpy(), frame["longitude"].to_numpy(), block_deg)
    elif "location_id" in frame or hashed:
        groups = frame["location_id" if "location_id" in frame else "source_file"].astype(str).reset_index(drop=True)
    else:  # each image alone, keyed by its row number (ranked as its text, without a string per row)
        groups = None
    out = frame.copy(deep=False)  # a new column only
    if hashed:
        out["split"] = hash_split_groups(groups, fractions, seed)
    else:
        n = len(frame)
        if groups is None:
            codes = split_codes(row_number_ranks(n), n, fractions, seed)
        else:
            codes = _group_splits(groups, fractions, seed)
        out["split"] = pd.Categorical.from_codes(codes, categories=SPLITS)
    return drop_near_train(out, buffer_km, log if log is not None else SkipLog())
