"""Coherent answers: do a prediction's coordinates, country and region agree?

    python benchmarks/answers.py --model runs/demo/model --dataset runs/demo/dataset [--split test]

For each way of answering (``cell``: the head's coordinates with the best cell's majority country,
as geohf answered before; ``point``; ``hierarchical``, see geohf/inference/answers.py), and with the
model folder's retrieval index when it has one (``geohf index build``), prints how many predictions
name a country their coordinates do not lie in, how many land at sea, and the median / mean km and
country / region accuracy on the split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasets import load_dataset  # noqa: E402

from geohf.evaluation.metrics import distance_metrics, hierarchy_metrics  # noqa: E402
from geohf.geo.places import AdminAreas  # noqa: E402
from geohf.inference.predictor import GeoPredictor  # noqa: E402

ANSWERS = ("cell", "point", "hierarchical")


def measure(model: str, dataset: str, split: str) -> dict[str, dict[str, float]]:
    ds = load_dataset(dataset)[split]
    truth = ds.select_columns(["country_code", "region_code"]).to_pandas()
    areas = AdminAreas.default()
    out = {}
    indexed = GeoPredictor(model).index is not None
    variants = [(a, False) for a in ANSWERS] + ([(a, True) for a in ANSWERS[1:]] if indexed else [])
    for answer, retrieval in variants:
        name = f"{answer} + retrieval" if retrieval else answer
        pred = GeoPredictor(model, answer=answer, retrieval=retrieval).predict_dataset(ds, desc=name)
        rows = areas.containing(pred.pred_latitude, pred.pred_longitude)
        named = pred.pred_country_code.astype(str)
        where = areas.table.lookup("country_code", rows)
        row = {
            "mismatched_country": int((named != where).sum()),
            "at_sea": int((rows < 0).sum()),
            "mismatched_region": int(
                (pred.pred_region_code.astype(str) != areas.table.lookup("region_code", rows)).sum()
            ),
            "n": len(pred),
        }
        row.update(distance_metrics(pred.true_latitude, pred.true_longitude, pred.pred_latitude, pred.pred_longitude))
        row.update(hierarchy_metrics(named, truth["country_code"], pred.pred_region_code, truth["region_code"]))
        out[name] = row
    return out


def table(results: dict[str, dict[str, float]]) -> str:
    cols = [
        ("mismatched_country", "country ≠ point's", "{:,.0f}"),
        ("at_sea", "at sea", "{:,.0f}"),
        ("mismatched_region", "region ≠ point's", "{:,.0f}"),
        ("median_km", "median km", "{:,.0f}"),
        ("mean_km", "mean km", "{:,.0f}"),
        ("within_750km", "≤750 km %", "{:.1f}"),
        ("country_accuracy", "country %", "{:.1f}"),
        ("country_balanced_accuracy", "country bal. %", "{:.1f}"),
        ("region_accuracy", "region %", "{:.1f}"),
    ]
    lines = ["| answer | " + " | ".join(c[1] for c in cols) + " |", "|---|" + "--:|" * len(cols)]
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(f.format(row[k]) if k in row else "-" for k, _, f in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/demo/model")
    parser.add_argument("--dataset", default="runs/demo/dataset")
    parser.add_argument("--split", default="test")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    results = measure(args.model, args.dataset, args.split)
    print(f"{args.split} split of {args.dataset}, model {args.model}")
    print(table(results))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
