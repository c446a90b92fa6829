"""``geohf evaluate``: metrics, pictures and a report for a model on a dataset split.

Writes ``metrics.json``, ``report.md``, ``predictions.parquet`` and pictures: the cumulative
error curve, accuracy per country, a country confusion matrix and a world map of the test
points coloured by error. When the split has ``location_id`` (several views per place),
per-view and fused (mean of logits, a multi-view ensemble) numbers are reported side by side.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import plots
from ..files import remove_temp_files
from ..inference.predictor import GeoPredictor
from .evaluation import TABLE_COLUMNS, Evaluation, as_predictor, evaluate
from .metrics import geolocation_metrics, per_class_precision_recall

CONFUSION_TOP = 20
STAGING_PREFIX = ".evaluate-partial-"


def country_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Accuracy, precision, recall and support per true country."""
    pr = per_class_precision_recall(frame["pred_country_code"], frame["true_country_code"])
    rows = {c: v for c, v in pr.items() if v["support"] > 0}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table["accuracy"] = table["recall"]
    return table.sort_values("support", ascending=False)


def country_rows(table: pd.DataFrame) -> list[str]:
    """Markdown rows of :func:`country_table` (support as a count, percentages to one decimal)."""
    return [
        f"| {c} | {int(r.support)} | {r.accuracy:.1f} | {r.precision:.1f} |"
        for c, r in zip(table.index, table.itertuples(index=False))
    ]


def confusion(frame: pd.DataFrame, top: int = CONFUSION_TOP) -> tuple[np.ndarray, list[str]]:
    """Confusion counts over the ``top`` most frequent true countries (others pooled as "other")."""
    labels = frame["true_country_code"].value_counts().index[:top].tolist()
    index = {c: i for i, c in enumerate(labels)}
    other = len(labels)
    m = np.zeros((other + 1, other + 1), dtype=np.int64)
    for t, p in zip(frame["true_country_code"], frame["pred_country_code"]):
        m[index.get(t, other), index.get(p, other)] += 1
    return m, [*labels, "other"]


def fuse_views(predictor: GeoPredictor, frame: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
    """One row per ``location_id``: views fused by the mean of their logits (log-probabilities)."""
    head = predictor.model.heads[predictor.model.config.primary_head]
    config = predictor.model.config
    logp = np.log(np.clip(probs, 1e-12, None))
    codes, uniques = pd.factorize(frame["location_id"])
    fused = np.zeros((len(uniques), logp.shape[1]))
    np.add.at(fused, codes, logp)
    fused /= np.bincount(codes)[:, None]
    logits = torch.as_tensor(fused, dtype=torch.float32)
    coords = head.coordinates(logits, config.coordinate_method, config.coordinate_top_k, config.coordinate_radius_km)
    first = frame.groupby(codes).first().reset_index(drop=True)
    best = logits.argmax(1).numpy()
    out = first[["location_id", "true_latitude", "true_longitude", "true_country_code"]].copy()
    out["pred_latitude"], out["pred_longitude"] = coords[:, 0].numpy(), coords[:, 1].numpy()
    out["pred_country_code"] = predictor.cells.country_code[best]
    out["views"] = np.bincount(codes)
    return out


def multiview_rows(predictor: GeoPredictor, evaluation: Evaluation) -> dict[str, dict]:
    """Per-view and fused metrics for splits with several views per location."""
    frame = evaluation.frame()
    frame["location_id"] = evaluation.truth["location_id"].to_numpy()
    fused = fuse_views(predictor, frame, evaluation.predictions.probs)
    return {
        name: geolocation_metrics(
            f["true_latitude"],
            f["true_longitude"],
            f["pred_latitude"],
            f["pred_longitude"],
            true_country=f["true_country_code"],
            pred_country=f["pred_country_code"],
        )
        for name, f in (("per view", frame), (f"fused ({fused['views'].mean():.1f} views)", fused))
    }


def markdown_table(rows: dict[str, dict]) -> str:
    head = "| method | " + " | ".join(label for _, label in TABLE_COLUMNS) + " |"
    sep = "|---|" + "---:|" * len(TABLE_COLUMNS)
    body = []
    for name, m in rows.items():
        cells = [f"{m[k]:,.1f}" if k in m and m[k] is not None else "-" for k, _ in TABLE_COLUMNS]
        body.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body])


def write_report(
    model,
    dataset_dict,
    output: str | os.PathLike,
    split: str = "test",
    batch_size: int = 64,
    human_results: str | None = None,
    title: str = "",
) -> dict:
    """Evaluate and write every artefact into ``output``; returns the metrics dict.

    The files are written into a hidden staging folder inside ``output`` and renamed into place once
    all are written, ``report.md`` last: a run killed part-way leaves ``output`` as it was (a previous
    run's files untouched, or no report at all), never a half-written or mixed set. The next run removes
    what a killed one left.
    """
    final = Path(output)
    final.mkdir(parents=True, exist_ok=True)
    for stale in final.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    remove_temp_files(final)
    out = final / f"{STAGING_PREFIX}{uuid.uuid4().hex[:8]}"
    out.mkdir()
    try:
        metrics = _write_files(model, dataset_dict, out, split, batch_size, human_results, title)
        last = {"metrics.json": 1, "report.md": 2}
        for name in sorted((p.name for p in out.iterdir()), key=lambda n: (last.get(n, 0), n)):
            os.replace(out / name, final / name)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return metrics


def _write_files(model, dataset_dict, out: Path, split, batch_size, human_results, title) -> dict:
    predictor = as_predictor(model)
    # fusing views per place needs the per-view probabilities (a report's split, not a field-scale one)
    places = "location_id" in dataset_dict[split].column_names
    evaluation = evaluate(predictor, dataset_dict, split=split, batch_size=batch_size, keep_probs=places)
    rows = dict(evaluation.rows)
    if human_results:
        from .human import summarise_results

        rows["human"] = summarise_results(human_results)
    multiview = {}
    if "location_id" in dataset_dict[split].column_names and "location_id" not in evaluation.truth:
        # per image (a multi-view model's evaluation is per place already, location_id included)
        evaluation.truth["location_id"] = list(dataset_dict[split]["location_id"])
    frame = evaluation.frame()
    if "location_id" in frame:
        # fusing probabilities needs classes (not a regression-only model) and the model's own
        # fusion to be their mean (an attention-fused model weighs views in a way this cannot replay)
        probs = evaluation.predictions.probs
        fusable = probs is not None and probs.shape[1] > 0 and predictor.model.config.fusion == "mean"
        if fusable and frame["location_id"].duplicated().any():
            multiview = multiview_rows(predictor, evaluation)

    countries = country_table(frame)
    matrix, labels = confusion(frame)
    pictures = {
        "error_curve": plots.plot_error_curve(
            {"model": frame["error_km"]}, out / "error_curve.png", title=f"{split}: share of images within x km"
        ),
        "map": plots.plot_errors(
            frame["true_latitude"],
            frame["true_longitude"],
            frame["error_km"],
            out / "error_map.png",
            title=f"{split} images coloured by error",
        ),
        "countries": plots.plot_country_accuracy(countries, out / "country_accuracy.png", title="accuracy per country"),
        "confusion": plots.plot_confusion(matrix, labels, out / "country_confusion.png", title="countries"),
    }
    frame.to_parquet(out / "predictions.parquet")
    metrics = {
        **evaluation.to_dict(),
        "results": rows,
        "multiview": multiview,
        "countries": countries.reset_index(names="country_code").to_dict("records"),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    lines = [
        f"# Evaluation{': ' + title if title else ''}",
        "",
        f"Split `{split}`: {evaluation.sizes.get(split)} images (train {evaluation.sizes.get('train')}).",
        "",
        markdown_table(rows),
        "",
    ]
    if multiview:
        lines += ["## Several views per place", "", markdown_table(multiview), ""]
    lines += [
        "## Error curve",
        "",
        "![error curve](error_curve.png)",
        "",
        "## Where the errors are",
        "",
        "![error map](error_map.png)",
        "",
        "## Countries",
        "",
        "![accuracy per country](country_accuracy.png)",
        "",
        "![country confusion](country_confusion.png)",
        "",
        "| country | support | accuracy % | precision % |",
        "|---|---:|---:|---:|",
        *country_rows(countries.head(30)),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    metrics["pictures"] = {k: Path(v).name for k, v in pictures.items()}
    return metrics
