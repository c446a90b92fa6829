"""Backbones: parameter counts and CPU inference img/s (batch 32, bf16 autocast, channels_last).

    python benchmarks/backbones.py [--image-size 224] [--batch-size 32] [--steps 5]

Each backbone is built as a geohf model with a 400-cell haversine head (random weights: the
speed does not depend on them) and timed on a fixed batch after warm-up.
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

from geohf.modeling import GeoConfig, HeadSpec, build_model  # noqa: E402

BACKBONES = {
    "resnet18": {},
    "mobilenetv3_large_100": {},
    "efficientnet_b1": {},
    "tf_efficientnet_lite0": {},
    "convnext_nano": {},
    "vit_small_patch16_224": {},
}


def transformers_vit_kwargs(image_size: int = 224) -> dict:
    """A ViT-B/16 (google/vit-base-patch16-224-in21k architecture), built from its config offline."""
    from transformers import ViTConfig

    config = ViTConfig(
        image_size=image_size,
        patch_size=16,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
    ).to_dict()
    return {"hf_config": {k: v for k, v in config.items() if k not in ("transformers_version", "architectures")}}


def head(n: int = 400) -> list[HeadSpec]:
    """A haversine head over ``n`` placeholder cells (all at 0°, 0°: only the head's size matters here)."""
    cells = {"latitude": [0.0] * n, "longitude": [0.0] * n}
    return [
        HeadSpec(
            name="cells",
            type="haversine",
            label_column="cell",
            labels=[f"c{i}" for i in range(n)],
            cells=cells,
            tau_km=75.0,
        )
    ]


@torch.inference_mode()
def rate(model, x, steps: int) -> float:
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(pixel_values=x)
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(pixel_values=x)
    return x.shape[0] * steps / (time.perf_counter() - start)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(ROOT / "runs" / "bench" / "backbones"))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    results = {}
    entries = {
        **BACKBONES,
        "vit_small_patch16_224": {"img_size": args.image_size},
        "transformers ViT-B/16": transformers_vit_kwargs(args.image_size),
    }
    for name, kwargs in entries.items():
        backbone = "google/vit-base-patch16-224-in21k" if name.startswith("transformers") else name
        config = GeoConfig(backbone=backbone, backbone_kwargs=kwargs, image_size=args.image_size, heads=head())
        model = build_model(config, None).eval().to(memory_format=torch.channels_last)
        x = torch.randn(args.batch_size, 3, args.image_size, args.image_size).contiguous(
            memory_format=torch.channels_last
        )
        params = sum(p.numel() for p in model.geo.parameters())
        results[name] = {"backbone_params_m": params / 1e6, "img_s": rate(model, x, args.steps)}
        print(f"{name:<24} {params / 1e6:6.1f}M params  {results[name]['img_s']:7.1f} img/s", flush=True)
    (out / "backbones.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
