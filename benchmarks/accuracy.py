"""Accuracy study on the Blue Marble benchmark: which head geolocates best?

    python benchmarks/accuracy.py [--steps 200] [--image-size 64] [--seeds 3] [--output runs/bench/accuracy]

Same spatially disjoint splits, same backbone (tf_efficientnet_lite0 from the offline ImageNet
weights), same budget (steps, batch, image size) for every trained row:

1. regression head (unit vector, great-circle loss);
2. plain cross-entropy over countries (class centroids give coordinates);
3. plain cross-entropy over geocells;
4. haversine-smoothed geocells, τ = 25, 75, 200 km;
5. multi-task: smoothed cells + regression + country;
6. frozen backbone (linear probe) for the smoothed cells;
7. kNN retrieval on the frozen backbone's embeddings (im2gps);
8. naive baselines: the training set's geometric median, a random cell by frequency;
9. coherent answers (``cell``: the best cell's country beside averaged coordinates, as before;
   ``point``; ``hierarchical``) of one trained model, hybrid cells + offsets (OSV-5M), with plain or
   smoothed cross-entropy and hierarchical cross-entropy, semantic cells split by bisection or by
   OPTICS + Voronoi (PIGEON), retrieval refinement and the GeoCLIP location-encoder head;
10. multi-view training on a 3-view Blue Marble variant (3 tiles around each place): one view per
    sample (scored per tile, and with its views' logits averaged at inference only) against 3 views
    per sample with the mean of logits or attention trained (``--only 3-view``; the same steps and
    images per step, so a 3-view step sees a third as many places).

Cell models turn probabilities into coordinates with the rule tuned on the validation
split (the same procedure for every row). Prints a table (mean ± std over seeds) and writes
JSON. The claim under test (PIGEON, Haas et al. 2024): smoothed cells beat regression and plain
classification on median km.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import load_dataset
from transformers import TrainingArguments

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import geohf  # noqa: E402,F401
from geohf.data.bluemarble import TileSpec, build_bluemarble  # noqa: E402
from geohf.data.transforms import AugmentConfig  # noqa: E402
from geohf.evaluation import evaluate, tune_coordinate_rule  # noqa: E402
from geohf.evaluation.evaluation import tune_retrieval  # noqa: E402
from geohf.evaluation.metrics import accuracy, distance_metrics  # noqa: E402
from geohf.geo.sphere import spherical_mean  # noqa: E402
from geohf.inference.predictor import GeoPredictor  # noqa: E402
from geohf.inference.retrieval import build_index  # noqa: E402
from geohf.modeling import GeoImageProcessor, create_model  # noqa: E402
from geohf.training.train import DataArguments, ModelArguments, run_training  # noqa: E402

COLUMNS = [
    ("median_km", "median km", "{:,.0f}"),
    ("mean_km", "mean km", "{:,.0f}"),
    ("within_25km", "≤25 km %", "{:.1f}"),
    ("within_200km", "≤200 km %", "{:.1f}"),
    ("within_750km", "≤750 km %", "{:.1f}"),
    ("within_2500km", "≤2500 km %", "{:.1f}"),
    ("geoscore", "GeoScore", "{:,.0f}"),
    ("country_accuracy", "country top-1 %", "{:.1f}"),
    ("region_accuracy", "region %", "{:.1f}"),
    ("train_seconds", "train s", "{:,.0f}"),
]


SEMANTIC = "semantic:min_samples=15,max_samples=60"  # the quadtree's sample band
VIEWS = 3  # tiles per place of the multi-view Blue Marble variant
# the flow row's head: PLONK's AdaLN MLP at half its width and depth, 50 Euler steps instead of 250 and 4 samples
# (the point is the first; the others give the radius): PLONK's sizes sample 1,000 tiles in ~20 min per sample
# on one loaded core, these in ~12 s
FLOW = {"dim": 256, "depth": 6, "expansion": 4, "steps": 50, "samples": 4}
FLOW_TUNING_TILES = 300  # validation tiles the guidance is picked on


@dataclass
class Row:
    name: str
    heads: str
    tau_km: float = 75.0
    freeze: bool = False
    bf16: bool = True
    seeds: int = 1  # replaced by --seeds for the main rows
    cells: str = "quadtree"  # the dataset's partition, or a spec fitted on the training split
    hierarchy_levels: int | None = None
    # each answer is a table row of the same trained model; "tuned": the one tune_coordinate_rule picks on validation
    answers: tuple[str, ...] = ("cell",)
    tta: str | None = None  # also each answer with this test-time augmentation (a row each)
    retrieval: bool = False  # also a row refined by retrieval against the training split
    gallery: str = "geoclip"  # a geoclip head's GPS gallery
    multiview: bool = False  # the Blue Marble variant with VIEWS tiles per place (dataset_views)
    views: int = 1  # views per training sample (places grouped by location_id)
    fusion: str = "mean"  # how a multi-view model fuses its views
    fused_at_inference: bool = False  # also score the places with the views' logits averaged at inference only
    flow: dict | None = None  # a flow head's FlowSettings (network and sampler)
    flow_guidance: tuple[float, ...] = ()  # a flow head's guidance scales to pick from on validation (median km)

    def variants(self) -> list[tuple[str, str, bool, int | None, str | None]]:
        """``(table row name, answer, refine by retrieval, views at evaluation or None: as trained, tta)`` per
        evaluation of one trained model."""
        named = len(self.answers) > 1 or self.retrieval or self.tta
        out = [(f"{self.name}, {a} answer" if named else self.name, a, False, None, None) for a in self.answers]
        if self.tta:
            out += [(f"{self.name}, {a} answer + TTA {self.tta}", a, False, None, self.tta) for a in self.answers]
        if self.retrieval:
            out.append((f"{self.name}, point answer + retrieval", "point", True, None, None))
        if self.fused_at_inference:
            out.append(
                (f"{self.name}; its {VIEWS} views fused at inference (mean of logits)", "point", False, VIEWS, None)
            )
        return out

    def folder(self, seed: int) -> str:
        cells = "" if self.cells == "quadtree" else "-" + self.cells.split(":")[0]
        levels = f"-h{self.hierarchy_levels}" if self.hierarchy_levels else ""
        levels += f"-{self.gallery}" if self.heads == "geoclip" else ""
        mode = ("frozen" if self.freeze else "ft") + ("" if self.bf16 else "-fp32")
        views = f"-mv{VIEWS}-v{self.views}-{self.fusion}" if self.multiview else ""
        flow = "-d{dim}x{depth}".format(**self.flow) if self.flow else ""
        return f"{self.heads.replace(',', '+')}-{self.tau_km:g}{cells}{levels}{flow}-{mode}{views}-{seed}"


def rows(seeds: int) -> list[Row]:
    return [
        Row("regression (unit vector)", "regression", seeds=seeds),
        Row("cross-entropy, countries", "country", seeds=seeds),
        Row("cross-entropy, geocells", "cells", seeds=seeds),
        Row("haversine cells τ=25 km", "haversine", tau_km=25.0),
        Row("haversine cells τ=75 km", "haversine", tau_km=75.0, seeds=seeds),
        Row("haversine cells τ=200 km", "haversine", tau_km=200.0),
        Row("multi-task (cells τ=75 + regression + country)", "haversine,regression,country"),
        Row("haversine cells τ=75 km, frozen backbone", "haversine", freeze=True),
        Row("haversine cells τ=75 km, fp32 (no autocast)", "haversine", bf16=False),
        # issue 14: coherent answers, hybrid offsets (OSV-5M), cell constructions (PIGEON)
        Row(
            "haversine τ=75 (quadtree)",
            "haversine",
            seeds=seeds,
            answers=("cell", "point", "hierarchical"),
            retrieval=True,
        ),
        Row("hybrid: cells τ=75 + offsets", "hybrid", seeds=seeds, answers=("point",), retrieval=True),
        Row("hybrid: cells + offsets (cross-entropy, OSV-5M)", "hybrid", tau_km=0.0, answers=("point",)),
        Row(
            "hybrid τ=75 + hierarchical CE (5 levels)",
            "hybrid",
            hierarchy_levels=5,
            seeds=seeds,
            answers=("point", "hierarchical", "tuned"),
            tta="flip",
        ),
        Row("haversine τ=75, semantic cells (bisection)", "haversine", cells=SEMANTIC, answers=("point",)),
        Row(
            "haversine τ=75, semantic cells (OPTICS + Voronoi)",
            "haversine",
            cells=SEMANTIC.replace("semantic", "semantic_optics"),
            answers=("point",),
        ),
        Row(
            "GeoCLIP head (released location encoder), GeoCLIP's 100K gallery",
            "geoclip",
            seeds=seeds,
            answers=("point",),
        ),
        Row(
            "GeoCLIP head (released location encoder), 100K + training gallery",
            "geoclip",
            seeds=seeds,
            gallery="both",
            answers=("point",),
        ),
        # issue 29: PLONK's generative head, smaller than PLONK's (512 x 12, 250 steps: see FLOW) to sample 1,000
        # test tiles on a CPU; the guidance picked on validation per seed
        Row(
            "flow matching on the sphere (PLONK head, 256x6 MLP, 50 Euler steps)",
            "flow",
            seeds=seeds,
            answers=("point",),
            flow=FLOW,
            flow_guidance=(0.0, 1.0, 2.0),
        ),
        # issue 13: multi-view training on the 3-view variant (same steps and images per step: a place of 3
        # views costs 3 images, so the 3-view rows see a third as many places per step)
        Row(
            "3-view Blue Marble: one view per sample, each test tile alone",
            "haversine",
            seeds=seeds,
            answers=("point",),
            multiview=True,
            fused_at_inference=True,
        ),
        Row(
            "3-view Blue Marble: 3 views per sample, mean of logits (trained)",
            "haversine",
            seeds=seeds,
            answers=("point",),
            multiview=True,
            views=VIEWS,
        ),
        Row(
            "3-view Blue Marble: 3 views per sample, attention (trained)",
            "haversine",
            seeds=seeds,
            answers=("point",),
            multiview=True,
            views=VIEWS,
            fusion="attention",
        ),
    ]


def dataset(root: Path, n_train: int, seed: int = 0) -> Path:
    path = root / "bluemarble"
    if not (path / "README.md").is_file():
        build_bluemarble(
            path,
            {"train": n_train, "validation": 1000, "test": 1000},
            TileSpec(seed=seed),
            cells=["quadtree:max_samples=60,min_samples=15"],
            overwrite=True,
        )
    return path


def dataset_views(root: Path, n_places: int, validation: int = 300, test: int = 500, seed: int = 0) -> Path:
    """The multi-view variant: ``VIEWS`` 64-px tiles per place, centred half a tile (32 px ≈ 2.1°) from it,
    evenly around it, labelled with the place's centre; 256-px split blocks (a place covers 128 px)."""
    path = root / f"bluemarble-{VIEWS}views-{n_places}-{validation}-{test}"
    if not (path / "README.md").is_file():
        build_bluemarble(
            path,
            {"train": n_places, "validation": validation, "test": test},
            TileSpec(seed=seed, block_px=256, views=VIEWS, view_offset_px=32),
            cells=["quadtree:max_samples=60,min_samples=15"],
            overwrite=True,
        )
    return path


def study_training_args(
    out: Path, steps: int, batch_size: int, learning_rate: float, seed: int, bf16: bool = True
) -> TrainingArguments:
    """The studies' schedule: AdamW, cosine after a 5 % warm-up, bf16 on CPU, no checkpoints or evaluations."""
    return TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=0.01,
        lr_scheduler_type="cosine",
        warmup_steps=max(steps // 20, 1),
        bf16=bf16,
        use_cpu=True,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=seed,
        logging_steps=steps,
    )


def train_and_score(row: Row, seed: int, data: Path, out: Path, args) -> dict[str, dict]:
    """Train ``row`` once with ``seed``; metrics per :meth:`Row.variants` (and ``_baselines``)."""
    model_args = ModelArguments(
        heads=row.heads,
        tau_km=row.tau_km,
        freeze_backbone=row.freeze,
        image_size=args.image_size,
        crop_pct=1.0,
        cells=row.cells,
        hierarchy_levels=row.hierarchy_levels,
        geoclip_gallery=row.gallery,
        views=row.views,
        fusion=row.fusion,
        flow=json.dumps(row.flow) if row.flow else None,
    )
    training = study_training_args(
        out,
        args.steps,
        max(args.batch_size // row.views, 1),  # the same images per step
        args.learning_rate * (10 if row.freeze else 1),
        seed,
        bf16=row.bf16,
    )
    start = time.perf_counter()
    run_training(model_args, DataArguments(dataset=str(data)), AugmentConfig(), training)
    seconds = time.perf_counter() - start
    ds = load_dataset(str(data))
    results: dict[str, dict] = {}
    for name, answer, refine, views, tta in row.variants():
        answer = None if answer == "tuned" else answer  # None: the config's, as tuned on validation
        predictor = GeoPredictor(str(out), answer=answer, tta=tta)
        if views is not None:  # a one-view model scoring places: mean of its views' logits
            predictor.model.config.views = views
        if predictor.model.config.head().is_classifier:  # the primary head; regression has no rule to tune
            tune_coordinate_rule(predictor, ds["validation"])  # on the plain view, also for a TTA predictor
        if row.flow_guidance:
            tuned = tune_flow_guidance(predictor, ds["validation"], row.flow_guidance)
            print(f"{name} seed {seed}: guidance {tuned['guidance']:g} (validation median km {tuned['median_km']})")
        if refine:
            refine_with_retrieval(predictor, ds, out)
        rows = evaluate(predictor, ds, split="test").rows
        results[name] = {**rows["model"], "train_seconds": seconds}
        results["_baselines"] = rows
    return results


def refine_with_retrieval(predictor, ds, out: Path) -> None:
    """Index the training split into the model folder (``geohf index build``) and tune the refinement
    on validation (never test); the predictor then refines with it."""
    index = build_index(predictor, ds["train"], "auto", split="train", folder=out)
    predictor.index = index
    tune_retrieval(predictor, ds["validation"], index)
    index.save(out)


@torch.inference_mode()
def tune_flow_guidance(predictor, dataset, guidances, tiles: int = FLOW_TUNING_TILES) -> dict:
    """Pick a flow head's classifier-free guidance by the median km of its point (one sample per tile, the same
    noise for every scale) on the first ``tiles`` of ``dataset`` (a validation split), and set it in the model."""
    from geohf.geo.sphere import haversine_km, xyz_to_latlon

    model = predictor.model
    head = model.heads[model.config.primary_head]
    part = dataset.select(range(min(tiles, len(dataset))))
    pixels = predictor.processor.pixel_values(list(part["image"])).to(predictor.device)
    embeddings = torch.cat([model.geo(pixels[i : i + 128]).embeddings.float() for i in range(0, len(pixels), 128)])
    noise = head.noise(embeddings, 1)[:, 0].to(embeddings.device)
    median_km = {}
    for g in guidances:
        points = head.sample(embeddings, noise, guidance=g).double().cpu()
        lat, lon = xyz_to_latlon(points.numpy())
        km = haversine_km(np.asarray(part["latitude"]), np.asarray(part["longitude"]), lat, lon)
        median_km[g] = round(float(np.median(km)))
    best = min(median_km, key=median_km.get)
    head.settings.guidance = best
    spec = next(h for h in model.config.heads if h["name"] == model.config.primary_head)
    spec["flow"] = {**(spec.get("flow") or {}), "guidance": best}
    return {"guidance": best, "median_km": median_km}


@torch.inference_mode()
def embed(model, dataset, processor, batch: int = 128) -> np.ndarray:
    out = []
    for i in range(0, len(dataset), batch):
        images = dataset[i : i + batch]["image"]
        pixel_values = processor(images)["pixel_values"].contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out.append(model.geo(pixel_values).embeddings.float())
    emb = torch.cat(out)
    return torch.nn.functional.normalize(emb, dim=-1).numpy()


def knn_row(data: Path, args, k: int = 10) -> dict:
    """im2gps-style retrieval: the spherical mean of the k most similar training tiles (cosine, frozen embeddings)."""
    ds = load_dataset(str(data))
    # the same backbone as the trained rows, its offline ImageNet weights; the (untrained) head is unused
    model = create_model(
        "tf_efficientnet_lite0", heads=["regression"], pretrained="offline", image_size=args.image_size, crop_pct=1.0
    )
    model = model.eval().to(memory_format=torch.channels_last)
    processor = GeoImageProcessor.from_config(model.config)
    start = time.perf_counter()
    train_emb, test_emb = embed(model, ds["train"], processor), embed(model, ds["test"], processor)
    sims = test_emb @ train_emb.T
    nearest = np.argsort(-sims, axis=1)[:, :k]
    train_lat, train_lon = np.asarray(ds["train"]["latitude"]), np.asarray(ds["train"]["longitude"])
    lat, lon = spherical_mean(train_lat[nearest], train_lon[nearest], axis=-1)
    test = ds["test"].select_columns(["latitude", "longitude", "country_code"]).to_pandas()
    metrics = distance_metrics(test.latitude, test.longitude, lat, lon)
    train_cc = np.asarray(ds["train"]["country_code"])
    votes = [max(set(c), key=list(c).count) for c in train_cc[nearest]]
    metrics["country_accuracy"] = accuracy(votes, test.country_code)
    metrics["train_seconds"] = time.perf_counter() - start  # no training: embedding time
    return metrics


def summarise(results: list[dict]) -> dict:
    keys = [k for k, _, _ in COLUMNS]
    out = {}
    for key in keys:
        values = [r[key] for r in results if key in r]
        if values:
            out[key] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}
    return out


def table(summary: dict[str, dict]) -> str:
    head = ["method", *[label for _, label, _ in COLUMNS]]
    lines = [head]
    for name, s in summary.items():
        cells = [name]
        for key, _, fmt in COLUMNS:
            if key not in s:
                cells.append("-")
            elif s[key]["n"] > 1:
                cells.append(f"{fmt.format(s[key]['mean'])} ± {fmt.format(s[key]['std'])}")
            else:
                cells.append(fmt.format(s[key]["mean"]))
        lines.append(cells)
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    rendered = [
        " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in lines
    ]
    rendered.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(rendered)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(ROOT / "runs" / "bench" / "accuracy"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-tiles", type=int, default=8000)
    parser.add_argument("--views-validation", type=int, default=300, help="3-view variant: validation places")
    parser.add_argument("--views-test", type=int, default=500, help="3-view variant: test places")
    parser.add_argument("--only", nargs="*", help="run only rows whose name contains one of these")
    parser.add_argument("--report", default="accuracy.json", help="JSON file name inside --output")
    args = parser.parse_args(argv)
    root = Path(args.output)
    root.mkdir(parents=True, exist_ok=True)
    selected = [r for r in rows(args.seeds) if not args.only or any(o in r.name for o in args.only)]
    single = any(not r.multiview for r in selected) or not args.only or any("kNN" in o for o in args.only)
    data = dataset(root, args.train_tiles) if single else None
    multiview = any(r.multiview for r in selected)
    places = args.train_tiles // VIEWS, args.views_validation, args.views_test
    data_views = dataset_views(root, *places) if multiview else None
    summary: dict[str, dict] = {}
    raw: dict[str, list] = {}
    baselines = None
    for row in selected:
        per_variant: dict[str, list] = {name: [] for name, *_ in row.variants()}
        for seed in range(row.seeds):
            result = train_and_score(row, seed, data_views if row.multiview else data, root / row.folder(seed), args)
            found = result.pop("_baselines")
            baselines = baselines if row.multiview and baselines else found  # the single-view benchmark's
            for name, metrics in result.items():
                per_variant[name].append(metrics)
                print(f"{name} seed {seed}: median {metrics['median_km']:,.0f} km", flush=True)
            for name, results in per_variant.items():
                raw[name], summary[name] = results, summarise(results)
            # what is done so far (every seed) survives a crash or a stop in a later run
            (root / f"{Path(args.report).stem}.partial.json").write_text(json.dumps(raw, indent=2, default=float))
    if not args.only or any("kNN" in o for o in args.only):
        name = "kNN retrieval (k=10, frozen ImageNet embeddings)"
        raw[name] = [knn_row(data, args)]
        summary[name] = summarise(raw[name])
    for name in ("geometric median", "random cell by frequency"):
        if baselines and name in baselines:
            summary[f"baseline: {name}"] = summarise([baselines[name]])
    text = table(summary)
    print(text)
    report = {
        "args": vars(args),
        "summary": summary,
        "runs": raw,
        "table": text,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
    }
    (root / args.report).write_text(json.dumps(report, indent=2, default=float))
    return report


def machine() -> str:
    import os
    import platform

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


if __name__ == "__main__":
    main()
