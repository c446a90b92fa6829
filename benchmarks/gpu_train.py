"""GPU training speed: ViT-B/16 and EfficientNet-B1 at 224 px, bf16, img/s and model FLOPs utilisation.

    python benchmarks/gpu_train.py [--batch-size 128] [--steps 30] [--peak-tflops 989]

Runs on any CUDA machine (random weights and data: speed does not depend on them). MFU is
the achieved training FLOPs (counted by ``torch.utils.flop_counter`` on one forward +
backward) over the accelerator's dense bf16 peak (H100 SXM: 989 TFLOP/s; pass yours).
Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.backbones import head, transformers_vit_kwargs  # noqa: E402
from geohf.modeling import GeoConfig, build_model  # noqa: E402

MODELS = {
    "ViT-B/16 (transformers)": ("google/vit-base-patch16-224-in21k", True),
    "EfficientNet-B1": ("efficientnet_b1", False),
}


def step_flops(model, x, labels) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.autocast("cuda", dtype=torch.bfloat16):
        model(pixel_values=x, labels=labels).loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def time_steps(model, opt, x, labels, steps: int, warmup: int = 5) -> float:
    """Seconds per bf16 training step (forward, backward, optimizer) after ``warmup`` steps."""

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(pixel_values=x, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--output", default=str(ROOT / "runs" / "bench" / "gpu"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (run this on a GPU machine)")
        return {}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results = {"device": torch.cuda.get_device_name(), "args": vars(args)}
    for name, (backbone, is_hf) in MODELS.items():
        kwargs = transformers_vit_kwargs() if is_hf else {}
        config = GeoConfig(
            backbone=backbone, backbone_kwargs=kwargs, image_size=224, heads=head(), depthwise_fp32=False
        )
        model = build_model(config, None).cuda().train().to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        x = torch.randn(args.batch_size, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, 400, (args.batch_size,), device="cuda")
        flops = step_flops(model, x, labels)
        fwd = torch.compile(model) if args.compile else model
        seconds = time_steps(fwd, opt, x, labels, args.steps)
        results[name] = {
            "img_s": args.batch_size / seconds,
            "tflops_achieved": flops / seconds / 1e12,
            "mfu": flops / seconds / 1e12 / args.peak_tflops,
            "step_gflops": flops / 1e9,
        }
        print(f"{name}: {results[name]['img_s']:,.0f} img/s, MFU {results[name]['mfu']:.1%}", flush=True)
    (out / "gpu.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
