"""Throughput: geohf's paths against minimal PyTorch, measured side by side in one process.

    python benchmarks/throughput.py [--steps 20] [--image-size 96] [--batch-size 64] [--rounds 3]
        [--sections train,input,grid,inference,decode] [--profile] [--output runs/bench/throughput]

Every comparison runs its sides in interleaved rounds and reports the median of each side (the
CPUs are shared and drift; a ratio inside one run is what to read). Inference and decoding run first,
in the state a fresh ``geohf predict`` process has (later sections slow the raw forward by 5-10%):

* training img/s: ``Trainer`` (``GeoTrainer``) vs a raw PyTorch loop on the same model, data
  path, batch and precision (goal >= 0.95);
* inference img/s: ``pipeline("image-geolocation")`` on decoded images and ``geohf predict``'s
  streaming path on PNG files vs a raw batched forward on preprocessed tensors (goal >= 0.90);
* decode + preprocess img/s of a 64-px PNG tile to a 96-px normalised tensor: the batched tensor
  path (``decode_pixels`` + ``GeoImageProcessor.pixel_values``) vs the per-image PIL path (goal >= 8,000);
* input pipeline: images/s decoded + transformed by the training data path with 0 and 2
  DataLoader workers vs the model's consumption rate (the data path must not be the bottleneck);
* bf16 vs fp32 and channels_last vs not, for a training step and for inference;
* ``--profile``: CPU time per image of each stage of ``geohf predict`` (every stream's thread counted)
  beside the raw forward's.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from datasets import load_dataset
from transformers import TrainerCallback, pipeline

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import geohf.inference.pipeline  # noqa: E402,F401  (registers pipeline("image-geolocation"))
from geohf import create_model  # noqa: E402
from geohf import images as image_decoding  # noqa: E402
from geohf.data.bluemarble import TileSpec, build_bluemarble  # noqa: E402
from geohf.data.label_space import load_partition  # noqa: E402
from geohf.data.transforms import GeoCollator, example_transform  # noqa: E402
from geohf.images import decode_image, decode_pixels  # noqa: E402
from geohf.inference import graph as graph_module  # noqa: E402
from geohf.inference.engine import chunks, default_streams, in_streams, load_ahead  # noqa: E402
from geohf.inference.inputs import ImageRef, PredictItem  # noqa: E402
from geohf.inference.predictor import GeoPredictor  # noqa: E402
from geohf.inference.predictor import forward as geohf_forward  # noqa: E402
from geohf.inference.stream import ItemDataset, decode_threads, iter_predictions  # noqa: E402
from geohf.malloc import BATCH, set_malloc  # noqa: E402
from geohf.modeling import GeoImageProcessor  # noqa: E402
from geohf.training import GeoTrainer, GeoTrainingArguments  # noqa: E402


def data(root: Path) -> Path:
    path = root / "bluemarble"
    if not (path / "README.md").is_file():
        build_bluemarble(
            path,
            {"train": 3000, "validation": 200, "test": 1000},
            TileSpec(),
            cells=["quadtree:max_samples=60,min_samples=15"],
            overwrite=True,
        )
    return path


def model_and_processor(dataset: Path, image_size: int, channels_last: bool = True, depthwise_fp32: bool = True):
    # the dataset's own quadtree partition; targets read from its cell_quadtree column, as geohf train does
    model = create_model(
        "tf_efficientnet_lite0",
        heads=["haversine"],
        cells=load_partition(str(dataset), "quadtree"),
        cells_from_column=True,
        pretrained="offline",
        tau_km=75.0,
        image_size=image_size,
        crop_pct=1.0,
        depthwise_fp32=depthwise_fp32,
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, GeoImageProcessor.from_config(model.config)


def raw_train_split(dataset: Path):
    return load_dataset(str(dataset), split="train")


def train_set(raw, model, processor):
    """The raw split through the training data path (what ``GeoTrainer`` attaches when not augmenting)."""
    config = model.config
    transform = example_transform(
        processor.transform, config.head_specs, config.primary_head, partitions=model.cell_partitions
    )
    return raw.with_transform(transform)


def timed(fn, steps: int, warmup: int = 3) -> float:
    """Seconds per call of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def raw_train_rate(model, loader, bf16: bool, steps: int, channels_last: bool = True) -> float:
    """Images/s of a minimal loop: load batch, autocast forward, backward, AdamW step."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    it = iter(loader)

    def step():
        nonlocal it
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        x = batch["pixel_values"]
        if not channels_last:
            x = x.contiguous()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(pixel_values=x, labels=batch["labels"], coordinates=batch["coordinates"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return loader.batch_size / timed(step, steps)


class StepClock(TrainerCallback):
    """When each optimizer step ended."""

    def __init__(self):
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def trainer_rate(model, raw, processor, batch: int, bf16: bool, steps: int, out: Path) -> dict[str, float]:
    """Images/s of ``GeoTrainer.train`` for ``steps`` steps (after a warm-up run): steady state (from the
    end of the first step to the end of the last, as the raw loop is timed) and the whole ``train()`` call.
    ``raw`` is the untransformed split: ``GeoTrainer`` attaches the transform and collator itself."""
    clock = StepClock()

    def run(n):
        args = GeoTrainingArguments(
            output_dir=str(out),
            max_steps=n,
            per_device_train_batch_size=batch,
            bf16=bf16,
            use_cpu=True,
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            disable_tqdm=True,
            logging_steps=10_000,
            dataloader_num_workers=0,
        )
        trainer = GeoTrainer(model=model, args=args, train_dataset=raw, processing_class=processor, callbacks=[clock])
        clock.ends.clear()
        start = time.perf_counter()
        trainer.train()
        return time.perf_counter() - start

    run(3)  # warm-up (oneDNN kernels, allocator)
    whole = run(steps)
    steady = (len(clock.ends) - 1) * batch / (clock.ends[-1] - clock.ends[0])
    return {"steady_img_s": steady, "whole_call_img_s": steps * batch / whole}


def input_rate(train, batch: int, workers: int, batches: int = 20) -> float:
    loader = torch.utils.data.DataLoader(
        train,
        batch_size=batch,
        shuffle=True,
        collate_fn=GeoCollator(),
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - start)


def raw_call(model, bf16: bool = True, graph_on: torch.Tensor | None = None) -> Callable[[torch.Tensor], object]:
    """One raw inference forward of a batch: the model's eager forward (under bf16 autocast when ``bf16``),
    or given ``graph_on``, its traced graph (:mod:`geohf.inference.graph`), warmed on that batch until
    it is traced and checked."""
    model.eval()
    if graph_on is not None:
        with torch.inference_mode():
            for _ in range(graph_module.EAGER_BATCHES + 2):
                geohf_forward(model, graph_on, bf16)
        return lambda x: geohf_forward(model, x, bf16)

    def eager(x: torch.Tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(pixel_values=x)

    return eager


@torch.inference_mode()
def raw_infer_rate(call, x: torch.Tensor, steps: int) -> float:
    """img/s of ``call(x)`` (:func:`raw_call`) after 3 warm-up calls."""

    def step():
        with torch.inference_mode():
            call(x)

    return x.shape[0] / timed(step, steps)


CPU_SECONDS: dict[str, list[float]] = {}
"""Process CPU seconds of every call timed by :func:`median_rounds` (all threads): a second view of each
side's cost that the other tenants of shared cores disturb less than wall time."""


def median_rounds(sides: dict, rounds: int) -> dict[str, list[float]]:
    """``{name: fn() -> img/s}`` run in ``rounds`` interleaved rounds: every side's rates (and CPU seconds
    in :data:`CPU_SECONDS`)."""
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            cpu = time.process_time()
            rates[name].append(fn())
            CPU_SECONDS.setdefault(name, []).append(time.process_time() - cpu)
    return rates


def paired_ratio(rates: dict[str, list[float]], side: str, base: str) -> float:
    """Median over rounds of ``side / base`` measured in the same round (drift between rounds cancels)."""
    return statistics.median(a / b for a, b in zip(rates[side], rates[base]))


def decode_preprocess_rates(files: list[Path], processor, rounds: int, batch: int = 32) -> dict[str, list[float]]:
    """img/s from PNG file to normalised (N, 3, S, S) batch: the tensor path vs the per-image PIL path."""

    def tensor_path():
        start = time.perf_counter()
        for i in range(0, len(files), batch):
            processor.pixel_values([decode_pixels(f).pixels for f in files[i : i + batch]])
        return len(files) / (time.perf_counter() - start)

    items = ItemDataset([PredictItem([ImageRef(str(f))]) for f in files])
    batches = list(chunks(range(len(files)), batch))
    streams = default_streams("cpu")

    def tensor_path_threads():  # geohf predict with one stream (an accelerator): decode threads ahead of the caller
        start = time.perf_counter()
        for loaded in load_ahead(items.batch, chunks(range(len(files)), batch), decode_threads()):
            processor.pixel_values([p for item in loaded for p in item.pixels])
        return len(files) / (time.perf_counter() - start)

    def decode_and_resize(indices: list[int]) -> torch.Tensor:
        return processor.pixel_values([p for item in items.batch(indices) for p in item.pixels])

    def tensor_path_streams():  # geohf predict on a CPU: batches in streams, each decoded and resized in its thread
        start = time.perf_counter()
        for _ in in_streams(decode_and_resize, batches, streams):
            pass
        return len(files) / (time.perf_counter() - start)

    def with_torchvision_png(side):  # the same side with torchvision's libpng (geohf without the [fast] extra)
        def run():
            installed = image_decoding.png_decoder
            image_decoding.png_decoder = lambda: ("torchvision", torchvision_png)
            try:
                return side()
            finally:
                image_decoding.png_decoder = installed

        return run

    torchvision_png = image_decoding._torchvision_png()

    def pil_path():  # what geohf did before: PIL decode, timm's transform per image, stack
        start = time.perf_counter()
        for i in range(0, len(files), batch):
            torch.stack([processor.reference_transform(decode_image(f).image) for f in files[i : i + batch]])
        return len(files) / (time.perf_counter() - start)

    def decode_only():
        start = time.perf_counter()
        for f in files:
            decode_pixels(f)
        return len(files) / (time.perf_counter() - start)

    arrays = [decode_pixels(f).pixels for f in files]

    def preprocess_only():
        start = time.perf_counter()
        for i in range(0, len(arrays), batch):
            processor.pixel_values(arrays[i : i + batch])
        return len(arrays) / (time.perf_counter() - start)

    tensor_path(), pil_path()  # warm-up
    return median_rounds(
        {
            "tensor_path": tensor_path,
            "tensor_path_streams": tensor_path_streams,
            "tensor_path_streams_torchvision_png": with_torchvision_png(tensor_path_streams),
            "tensor_path_decode_threads": tensor_path_threads,
            "pil_path": pil_path,
            "decode_only": decode_only,
            "decode_only_torchvision_png": with_torchvision_png(decode_only),
            "preprocess": preprocess_only,
        },
        rounds,
    )


def stage_owners() -> dict[str, tuple[object, str]]:
    """The stages of ``geohf predict``'s path: where each one's function is looked up when it is called."""
    from geohf.inference import photos as inference_images
    from geohf.inference import predictor as predictor_module
    from geohf.inference import stream as stream_module
    from geohf.inference.predictions import GeoPredictions

    return {
        "forward": (predictor_module, "forward"),
        "decode (file → uint8 pixels)": (inference_images, "decode_pixels"),
        "resize + normalise": (GeoImageProcessor, "pixel_values"),
        "answers (cells, land, names)": (predictor_module, "predictions_from_outputs"),
        "records": (GeoPredictions, "records"),
        "record fields (make_record)": (stream_module, "make_record"),
    }


def profile_predict(predictor, files: list[Path]) -> dict:
    """CPU time per image of each stage of ``geohf predict`` (:func:`cli_rate`), every stream's thread
    counted: each stage's function is wrapped to add the thread CPU time of its calls (a stream runs
    its forward on its own torch thread). ``other`` is the rest of the process's CPU time: stream and
    decode threads waiting on the GIL and locks, and the Python between the stages."""
    owners = stage_owners()
    spent = dict.fromkeys(owners, 0.0)
    lock = threading.Lock()

    def clocked(stage: str, fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                with lock:
                    spent[stage] += time.thread_time() - start

        return run

    originals = {stage: getattr(owner, name) for stage, (owner, name) in owners.items()}
    for stage, (owner, name) in owners.items():
        setattr(owner, name, clocked(stage, originals[stage]))
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        cli_rate(predictor, files)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        for stage, (owner, name) in owners.items():
            setattr(owner, name, originals[stage])
    n = len(files)
    per_image = {stage: 1e6 * seconds / n for stage, seconds in spent.items()}
    per_image["other (GIL and lock waits, Python glue)"] = 1e6 * cpu / n - sum(per_image.values())
    streams = default_streams(predictor.device)
    return {"img_s": n / wall, "cores_busy": cpu / wall, "cpu_us_per_image": per_image, "streams": streams}


def graph_ratio(inf: dict, side: str) -> str:
    """`` (traced raw forward R)``: ``side``'s ratio to the raw forward run as the traced graph geohf runs."""
    key = f"{side}_vs_raw_graph_ratio"
    return f" (traced raw forward {inf[key]:.2f})" if key in inf else ""


def figure_rows(results: dict) -> list[tuple[str, str, str, str, bool]]:
    """(figure, value, goal, ratio, met) rows of the issue's table, from what was measured."""
    rows = []
    inf, dec, train = results.get("inference"), results.get("decode"), results.get("train")
    if inf:
        rows.append(
            (
                "geohf predict img/s / raw forward",
                f"{inf['predict_img_s']:.0f} / {inf['raw_forward_img_s']:.0f}",
                ">= 0.90",
                f"{inf['predict_ratio']:.2f}" + graph_ratio(inf, "predict"),
                inf["predict_ratio"] >= 0.90,
            )
        )
        rows.append(
            (
                'pipeline("image-geolocation") img/s / raw forward',
                f"{inf['pipeline_img_s']:.0f} / {inf['raw_forward_img_s']:.0f}",
                ">= 0.90",
                f"{inf['pipeline_ratio']:.2f}" + graph_ratio(inf, "pipeline"),
                inf["pipeline_ratio"] >= 0.90,
            )
        )
    if dec:
        rows.append(
            (
                f"decode + preprocess 64-px PNG → 96-px tensor, img/s ({dec['streams']} streams, as geohf predict; "
                f"PNGs by {dec.get('png_decoder', 'torchvision')})",
                f"{dec['tensor_path_streams_img_s']:.0f}",
                ">= 8000",
                f"{dec['tensor_path_streams_img_s'] / dec['pil_path_img_s']:.1f}x the PIL path "
                f"({dec['pil_path_img_s']:.0f}; one thread {dec['tensor_path_img_s']:.0f}"
                + (
                    f"; torchvision's libpng {dec['tensor_path_streams_torchvision_png_img_s']:.0f})"
                    if "tensor_path_streams_torchvision_png_img_s" in dec
                    else ")"
                ),
                dec["tensor_path_streams_img_s"] >= 8000,
            )
        )
    if train:
        rows.append(
            (
                "Trainer img/s / raw training loop",
                f"{train['trainer_img_s']:.1f} / {train['raw_img_s']:.1f}",
                ">= 0.95",
                f"{train['ratio']:.2f}",
                train["ratio"] >= 0.95,
            )
        )
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(ROOT / "runs" / "bench" / "throughput"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=512, help="images for the inference comparisons")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every comparison (median)")
    parser.add_argument("--sections", default="train,input,grid,inference,decode")
    parser.add_argument("--profile", action="store_true", help="CPU per image of each stage of geohf predict")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, the cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    set_malloc(BATCH)  # as geohf predict runs (both sides of every comparison share the process)
    sections = set(args.sections.split(","))
    root = Path(args.output)
    root.mkdir(parents=True, exist_ok=True)
    dataset = data(root)
    torch.manual_seed(0)
    results: dict = {"args": vars(args), "torch_threads": torch.get_num_threads(), "malloc": "geohf.malloc.BATCH"}
    model, processor = model_and_processor(dataset, args.image_size)
    raw_train = raw_train_split(dataset)
    train = train_set(raw_train, model, processor)

    # ---- inference first, in the process as geohf predict starts it: the sections below leave the raw
    # forward up to 10% slower (DataLoader workers, other models' kernels) and predict less, which
    # flattered the ratios. Pipeline and geohf predict vs raw forward on preprocessed tensors
    files: list[Path] = []
    if sections & {"inference", "decode"} or args.profile:
        model.save_pretrained(root / "model")
        processor.save_pretrained(root / "model")
        test = load_dataset(str(dataset), split="test").select(range(args.images))
        images = [r["image"] for r in test]
        (root / "png").mkdir(exist_ok=True)
        for i, im in enumerate(images):
            path = root / "png" / f"{i:05d}.png"
            if not path.exists():
                im.save(path)
            files.append(path)
    short_steps = max(args.steps // 2, 5)  # timed calls of the raw forward and the grid's steps
    if "inference" in sections or args.profile:  # one preprocessed batch: the raw forward's input
        pixel = processor(images[:32])["pixel_values"].contiguous(memory_format=torch.channels_last)
        raw_streams_images = 2 * pixel.shape[0] * (short_steps + 1)  # raw_streams_rate's warm-up call included
    if "inference" in sections:
        geo = pipeline("image-geolocation", model=str(root / "model"))
        predictor = GeoPredictor(str(root / "model"))
        # warm: a run traces the model's graph after 16 eager batches (about 0.12 s once, geohf.inference.graph),
        # here in the second call; the figures are the steady rates of a long run
        predict_warmup = [cli_rate(predictor, files) for _ in range(2)]
        geo(images, batch_size=32)
        geo(images, batch_size=32)
        eager, traced = raw_call(model), raw_call(model, graph_on=pixel)

        def raw_forward():
            return raw_infer_rate(eager, pixel, short_steps)

        def pipe():
            start = time.perf_counter()
            geo(images, batch_size=32)
            return len(images) / (time.perf_counter() - start)

        rates = median_rounds(
            {
                "raw_forward": raw_forward,
                "pipeline": pipe,
                "predict": lambda: cli_rate(predictor, files),
                "predict_one_stream": lambda: cli_rate(predictor, files, streams=1),
                "raw_forward_streams": lambda: raw_streams_rate(eager, pixel, short_steps),
                "raw_forward_graph": lambda: raw_infer_rate(traced, pixel, short_steps),
                "raw_forward_graph_streams": lambda: raw_streams_rate(traced, pixel, short_steps),
            },
            args.rounds,
        )
        med = {k: statistics.median(v) for k, v in rates.items()}
        n_raw = pixel.shape[0] * (short_steps + 3)  # raw_infer_rate's warm-up calls included
        images_of = {
            "raw_forward": n_raw,
            "raw_forward_streams": raw_streams_images,
            "raw_forward_graph": n_raw,
            "raw_forward_graph_streams": raw_streams_images,
        }
        cpu_rate = {k: statistics.median(images_of.get(k, len(files)) / c for c in CPU_SECONDS[k]) for k in rates}
        results["inference"] = {
            "raw_forward_img_s": med["raw_forward"],
            "pipeline_img_s": med["pipeline"],
            "pipeline_ratio": paired_ratio(rates, "pipeline", "raw_forward"),
            "predict_img_s": med["predict"],
            "predict_ratio": paired_ratio(rates, "predict", "raw_forward"),
            "predict_one_stream_img_s": med["predict_one_stream"],
            "predict_one_stream_ratio": paired_ratio(rates, "predict_one_stream", "raw_forward"),
            # the stronger baseline: the raw forward run as predict runs it, two batches at once, a thread each
            "raw_forward_streams_img_s": med["raw_forward_streams"],
            "predict_vs_raw_streams_ratio": paired_ratio(rates, "predict", "raw_forward_streams"),
            # the strictest: the raw forward as the traced graph predict runs (it skips Python per operator)
            "raw_forward_graph_img_s": med["raw_forward_graph"],
            "predict_vs_raw_graph_ratio": paired_ratio(rates, "predict", "raw_forward_graph"),
            "pipeline_vs_raw_graph_ratio": paired_ratio(rates, "pipeline", "raw_forward_graph"),
            "raw_forward_graph_streams_img_s": med["raw_forward_graph_streams"],
            "predict_vs_raw_graph_streams_ratio": paired_ratio(rates, "predict", "raw_forward_graph_streams"),
            "predict_warmup_img_s": predict_warmup,  # the process's first two calls: the second traces
            "ratio_of_medians": {k: med[k] / med["raw_forward"] for k in rates},
            "cpu_img_s": cpu_rate,
            "cpu_ratio": {k: cpu_rate[k] / cpu_rate["raw_forward"] for k in rates},
            "goal": 0.90,
            "rounds": rates,
            "streams": default_streams(predictor.device),
            "note": "pipeline and predict include decoding and preprocessing; the raw forward does not",
        }
    if "decode" in sections:
        proc96 = GeoImageProcessor(image_size=96, crop_pct=1.0)  # 64-px tiles → 96 px, as the demo model
        rates = decode_preprocess_rates(files, proc96, args.rounds)
        med = {k: statistics.median(v) for k, v in rates.items()}
        cpu = {k: statistics.median(len(files) / c for c in CPU_SECONDS[k]) for k in rates}
        results["decode"] = {
            "cpu_img_s": cpu,
            "tensor_path_img_s": med["tensor_path"],
            "pil_path_img_s": med["pil_path"],
            "speedup_vs_pil_path": med["tensor_path"] / med["pil_path"],
            "tensor_path_streams_img_s": med["tensor_path_streams"],
            "png_decoder": image_decoding.png_decoder()[0],
            "tensor_path_streams_torchvision_png_img_s": med["tensor_path_streams_torchvision_png"],
            "streams": default_streams("cpu"),
            "tensor_path_decode_threads_img_s": med["tensor_path_decode_threads"],
            "decode_threads": decode_threads(),
            "decode_only_img_s": med["decode_only"],
            "decode_only_torchvision_png_img_s": med["decode_only_torchvision_png"],
            "preprocess_only_img_s": med["preprocess"],
            "goal_img_s": 8000,
            "rounds": rates,
        }
    if args.profile:  # the median of --rounds profiles by img/s, beside the raw forward's CPU per image
        predictor = GeoPredictor(str(root / "model"))
        cli_rate(predictor, files)
        cli_rate(predictor, files)  # traced, as in a long run
        raw = raw_call(model, graph_on=pixel)  # the forward predict runs
        cpu = time.process_time()
        raw_img_s = raw_streams_rate(raw, pixel, short_steps)
        raw_us = 1e6 * (time.process_time() - cpu) / raw_streams_images
        profiles = sorted((profile_predict(predictor, files) for _ in range(args.rounds)), key=lambda r: r["img_s"])
        results["profile"] = {
            "raw_forward_streams": {"img_s": raw_img_s, "cpu_us_per_image": raw_us},
            "predict": profiles[len(profiles) // 2],
        }
    # ---- training: Trainer vs raw loop, same model, data path, batch, precision
    if "train" in sections:
        loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True, collate_fn=GeoCollator())
        raws, trainers = [], []
        for _ in range(args.rounds):  # interleaved rounds, median of each: the CPUs are shared and drift
            raws.append(raw_train_rate(model, loader, True, args.steps))
            trainers.append(
                trainer_rate(model, raw_train, processor, args.batch_size, True, args.steps, root / "trainer")
            )
        raw = statistics.median(raws)
        trainer = statistics.median(t["steady_img_s"] for t in trainers)
        results["train"] = {
            "raw_img_s": raw,
            "trainer_img_s": trainer,
            "ratio": trainer / raw,
            "trainer_whole_call_img_s": statistics.median(t["whole_call_img_s"] for t in trainers),
            "rounds": {"raw": raws, "trainer": trainers},
            "goal": 0.95,
        }
        # the process's peak so far: the dataset build, inference (batch 32) and training (--batch-size)
        results["train"]["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # ---- input pipeline vs consumption
    if "input" in sections:
        results["input"] = {f"workers_{w}_img_s": input_rate(train, args.batch_size, w) for w in (0, 2)}
        if "train" in results:
            results["input"]["model_consumption_img_s"] = results["train"]["raw_img_s"]

    # ---- precision and layout, training step on a fixed batch (no data loading)
    if "grid" in sections:
        batch = GeoCollator()([train[i] for i in range(args.batch_size)])
        fixed = [batch]

        class Repeat(list):
            batch_size = args.batch_size

            def __iter__(self):
                while True:
                    yield fixed[0]

        grid = {}
        for depthwise in (True, False):
            for cl in (True, False):
                m, _ = model_and_processor(dataset, args.image_size, channels_last=cl, depthwise_fp32=depthwise)
                for bf16 in (True, False):
                    if not depthwise and not bf16:
                        continue  # the depthwise switch only matters under bf16
                    key = f"{'bf16' if bf16 else 'fp32'}{'+channels_last' if cl else ''}" + (
                        "" if depthwise or not bf16 else " (bf16 depthwise convs)"
                    )
                    grid[key] = {"train_img_s": raw_train_rate(m, Repeat(), bf16, short_steps, cl)}
                    x = batch["pixel_values"] if cl else batch["pixel_values"].contiguous()
                    grid[key]["infer_img_s"] = raw_infer_rate(raw_call(m, bf16), x, short_steps)
        results["precision_layout"] = grid

    print(json.dumps(results, indent=2))
    rows = figure_rows(results)
    if rows:
        print(f"\n{'figure':<58} {'measured':>14}  {'goal':>8}  ratio")
        for figure, value, goal, ratio, met in rows:
            print(f"{figure:<58} {value:>14}  {goal:>8}  {ratio} {'ok' if met else 'MISSED'}")
    (root / "throughput.json").write_text(json.dumps(results, indent=2))
    return results


def cli_rate(predictor, files: list[Path], streams: int | None = None) -> float:
    """img/s of ``geohf predict``'s streaming path (batches of 32 → records), no output file."""
    items = [PredictItem([ImageRef(str(f))]) for f in files]
    start = time.perf_counter()
    for _ in iter_predictions(predictor, items, 32, progress=False, streams=streams):
        pass
    return len(files) / (time.perf_counter() - start)


def raw_streams_rate(call, x: torch.Tensor, steps: int, streams: int = 2) -> float:
    """The raw forward ``call(x)`` (:func:`raw_call`) run as ``geohf predict`` runs batches
    (:func:`~geohf.inference.engine.in_streams`: ``streams`` threads at once, each with its share of
    torch's threads), after one warm-up call each."""

    def run(calls: int) -> None:
        with torch.inference_mode():
            for _ in range(calls):
                call(x)

    list(in_streams(run, [1] * streams, streams))
    start = time.perf_counter()
    list(in_streams(run, [steps] * streams, streams))
    return streams * steps * x.shape[0] / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
