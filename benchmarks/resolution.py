"""Resolution shift on the Blue Marble benchmark: does a model trained on one imagery resolution
still geolocate tiles of the same places rendered coarser?

    python benchmarks/resolution.py [--steps 400] [--seeds 1] [--factors 2 3] [--output runs/bench/resolution]

One dataset (the demo's recipe: 64-px tiles, quadtree cells, 96-px inputs), and for each factor a
copy of its test split cut from the mosaic downsampled that many times and upsampled back
(``geohf dataset build --layout bluemarble --map-downscale F``: same tiles, same labels). Two
models with the same budget: no augmentation, and the camera augmentations
(:meth:`AugmentConfig.camera`: random downscale up to 3x, JPEG quality 30-95, blur, white
balance). The coordinate rule is tuned on the (original) validation split only. Reported: test
median km on the original and on each coarser rendering, and their ratio (target with the
augmentations: <= 1.25x).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from datasets import load_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.accuracy import study_training_args  # noqa: E402
from geohf.data.bluemarble import TileSpec, build_bluemarble  # noqa: E402
from geohf.data.transforms import AugmentConfig  # noqa: E402
from geohf.evaluation import evaluate, tune_coordinate_rule  # noqa: E402
from geohf.inference.predictor import GeoPredictor  # noqa: E402
from geohf.training.train import DataArguments, ModelArguments, run_training  # noqa: E402

CELLS = ["quadtree:max_samples=60,min_samples=15"]
MODELS = {"no augmentation": AugmentConfig(), "camera augmentations": AugmentConfig.camera()}


def datasets(root: Path, factors: list[float], n_train: int, n_eval: int) -> dict[float, Path]:
    """The dataset (factor 1) and its coarser renderings: identical rows, other pixels."""
    out = {}
    for factor in [1.0, *factors]:
        path = root / f"bluemarble_x{factor:g}"
        if not (path / "README.md").is_file():
            build_bluemarble(
                path,
                {"train": n_train, "validation": n_eval, "test": n_eval},
                TileSpec(seed=0, map_downscale=factor),
                cells=CELLS,
                overwrite=True,
            )
        out[factor] = path
    return out


def train(augment: AugmentConfig, data: Path, out: Path, seed: int, args) -> float:
    training = study_training_args(out, args.steps, 64, 2e-3, seed)
    start = time.perf_counter()
    run_training(
        ModelArguments(image_size=args.image_size, crop_pct=1.0, tau_km=75.0),
        DataArguments(dataset=str(data)),
        augment,
        training,
    )
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(ROOT / "runs" / "bench" / "resolution"))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--train-tiles", type=int, default=8000)
    parser.add_argument("--eval-tiles", type=int, default=1000)
    parser.add_argument("--models", nargs="*", help="train only the models whose name contains one of these")
    parser.add_argument("--factors", type=float, nargs="+", default=[2.0, 3.0])
    args = parser.parse_args(argv)
    root = Path(args.output)
    root.mkdir(parents=True, exist_ok=True)
    data = datasets(root, args.factors, args.train_tiles, args.eval_tiles)
    tests = {f: load_dataset(str(p), split="test") for f, p in data.items()}
    validation = load_dataset(str(data[1.0]), split="validation")
    partial = root / "resolution.partial.json"
    runs: dict[str, list[dict]] = {name: [] for name in MODELS}
    if partial.is_file():  # a run stopped part-way resumes after its last finished model
        runs.update({k: v for k, v in json.loads(partial.read_text()).items() if k in MODELS})
    for name, augment in MODELS.items():
        if args.models and not any(m in name for m in args.models):
            continue
        for seed in range(len(runs[name]), args.seeds):
            folder = root / f"{'camera' if augment.enabled else 'plain'}_seed{seed}"
            seconds = train(augment, data[1.0], folder, seed, args)
            predictor = GeoPredictor(str(folder))
            tune_coordinate_rule(predictor, validation)
            medians = {f: evaluate(predictor, ds).rows["model"]["median_km"] for f, ds in tests.items()}
            run = {"train_seconds": seconds, **{f"median_km_x{f:g}": m for f, m in medians.items()}}
            run.update({f"ratio_x{f:g}": medians[f] / medians[1.0] for f in args.factors})
            runs[name].append(run)
            print(f"{name} seed {seed}: " + ", ".join(f"{k} {v:,.2f}" for k, v in run.items()), flush=True)
            partial.write_text(json.dumps(runs, indent=2))
    lines = [
        "| training | test median km | "
        + " | ".join(f"{f:g}x coarser: median km | ratio" for f in args.factors)
        + " |",
        "|---|--:|" + "--:|--:|" * len(args.factors),
    ]
    for name, results in runs.items():
        if not results:
            continue

        def cell(key: str, fmt: str, results: list[dict] = results) -> str:
            values = np.array([r[key] for r in results])
            text = fmt.format(values.mean())
            return text + (f" ± {fmt.format(values.std(ddof=1))}" if len(values) > 1 else "")

        parts = [cell("median_km_x1", "{:,.0f}")]
        for f in args.factors:
            parts += [cell(f"median_km_x{f:g}", "{:,.0f}"), cell(f"ratio_x{f:g}", "{:.2f}x")]
        lines.append(f"| {name} | " + " | ".join(parts) + " |")
    text = "\n".join(lines)
    print(text)
    report = {"args": vars(args), "runs": runs, "table": text, "date": time.strftime("%Y-%m-%d")}
    (root / "resolution.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
