"""GPU training speed: ViT-B/16 and EfficientNet-B1 at 224 px, and a CLIP ViT-L/14 at 336 px (StreetCLIP's and
``openai/clip-vit-large-patch14-336``'s tower, PIGEON's backbone) in each fine-tuning mode; bf16 autocast.

    python benchmarks/gpu_train.py [--batch-size 128] [--clip-batch-size 32] [--steps 30] [--peak-tflops 989]
    python benchmarks/gpu_train.py --tiny      # the same code on CPU with a tiny CLIP tower (a smoke run)

Runs on any CUDA machine (random weights and data: speed does not depend on them; the CLIP tower is built
offline from a ``CLIPVisionConfig`` of ViT-L/14-336's size). Per model: img/s, peak GPU memory, trainable
parameters and model FLOPs utilisation, the achieved training FLOPs (counted by ``torch.utils.flop_counter``
on one forward + backward) over the accelerator's dense bf16 peak (H100 SXM: 989 TFLOP/s; pass yours). The
CLIP modes: full fine-tuning (with and without activation checkpointing), the last block unfrozen (PIGEON,
OSV-5M), frozen (linear probe) and LoRA r=16. Without CUDA (and without ``--tiny``) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.backbones import VIT_L14, head, tower, transformers_vit_kwargs  # noqa: E402
from geohf.modeling import GeoConfig, build_model  # noqa: E402

CLIP_MODES = ("full", "full + activation checkpointing", "last block", "frozen", "LoRA r=16")
TINY_CLIP = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


@dataclass
class Case:
    """One benchmarked model: a geohf config, its input side, batch size and fine-tuning mode."""

    name: str
    config: GeoConfig
    size: int
    batch_size: int
    mode: str = "full"


def cases(args) -> list[Case]:
    if args.tiny:
        clip = tower("clip_vision_model", **TINY_CLIP, image_size=32, patch_size=8, projection_dim=16)
        clip_size, clip_batch, others = 32, 2, []
    else:
        clip = tower("clip_vision_model", **VIT_L14, image_size=336, patch_size=14, projection_dim=768)
        clip_size, clip_batch = 336, args.clip_batch_size
        others = [
            Case(
                "ViT-B/16 (transformers)",
                GeoConfig(
                    backbone="google/vit-base-patch16-224-in21k",
                    backbone_kwargs=transformers_vit_kwargs(),
                    image_size=224,
                    heads=head(),
                    depthwise_fp32=False,
                ),
                224,
                args.batch_size,
            ),
            Case(
                "EfficientNet-B1",
                GeoConfig(backbone="efficientnet_b1", image_size=224, heads=head(), depthwise_fp32=False),
                224,
                args.batch_size,
            ),
        ]
    config = GeoConfig(
        backbone="openai/clip-vit-large-patch14-336",
        backbone_kwargs={**clip, "projection": True},
        image_size=clip_size,
        heads=head(),
        depthwise_fp32=False,
    )
    name = "CLIP ViT-L/14-336 (transformers, projection)" if not args.tiny else "tiny CLIP (smoke run)"
    return others + [Case(f"{name}, {mode}", config, clip_size, clip_batch, mode) for mode in CLIP_MODES]


def build(case: Case, device: str):
    """The case's model on ``device`` in training mode, with its fine-tuning mode applied."""
    model = build_model(case.config, None)
    if case.mode == "frozen":
        model.freeze_backbone()
    elif case.mode == "last block":
        model.unfreeze_last_n_blocks(1)
    elif case.mode == "LoRA r=16":
        model.add_lora(16)
    elif case.mode == "full + activation checkpointing":
        model.activation_checkpointing_enable()
    return model.to(device).train().to(memory_format=torch.channels_last)


def step_flops(model, x, labels, device: str) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.autocast(device, dtype=torch.bfloat16):
        model(pixel_values=x, labels=labels).loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(model, opt, x, labels, steps: int, device: str, warmup: int = 5) -> float:
    """Seconds per bf16 training step (forward, backward, optimizer) after ``warmup`` steps."""

    def step():
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(pixel_values=x, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def measure(case: Case, args, device: str) -> dict:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = build(case, device)
    trainable, total = model.parameter_counts()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, **({"fused": True} if device == "cuda" else {}))
    x = torch.randn(case.batch_size, 3, case.size, case.size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 400, (case.batch_size,), device=device)
    flops = step_flops(model, x, labels, device)
    fwd = torch.compile(model) if args.compile else model
    seconds = time_steps(fwd, opt, x, labels, args.steps, device, warmup=args.warmup)
    out = {
        "mode": case.mode,
        "batch_size": case.batch_size,
        "image_size": case.size,
        "trainable_params": trainable,
        "total_params": total,
        "img_s": case.batch_size / seconds,
        "tflops_achieved": flops / seconds / 1e12,
        "mfu": flops / seconds / 1e12 / args.peak_tflops,
        "step_gflops": flops / 1e9,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
    }
    del model, opt, fwd
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=128, help="ViT-B/16 and EfficientNet-B1")
    parser.add_argument("--clip-batch-size", type=int, default=32, help="CLIP ViT-L/14-336, every mode")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="a tiny CLIP tower on CPU: checks the code, not speed")
    parser.add_argument("--output", default=str(ROOT / "runs" / "bench" / "gpu"))
    args = parser.parse_args(argv)
    if args.tiny:
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        print("no CUDA device: nothing to measure (run this on a GPU machine, or --tiny for a CPU smoke run)")
        return {}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (--tiny smoke run)"
    results = {"device": name, "args": vars(args)}
    for case in cases(args):
        results[case.name] = r = measure(case, args, device)
        memory = f", {r['peak_memory_gib']:.1f} GiB" if r["peak_memory_gib"] is not None else ""
        print(
            f"{case.name}: {r['img_s']:,.1f} img/s, MFU {r['mfu']:.1%}{memory}, "
            f"{r['trainable_params']:,} of {r['total_params']:,} parameters trained",
            flush=True,
        )
    (out / ("gpu_tiny.json" if args.tiny else "gpu.json")).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
