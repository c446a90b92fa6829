"""Backbones: parameter counts and CPU inference img/s (batch 32, bf16 autocast, channels_last).

    python benchmarks/backbones.py [--image-size 224] [--batch-size 32] [--steps 5]
    python benchmarks/backbones.py --families [--batch-size 8] [--steps 1] [--threads 2]

Each backbone is built as a geohf model with a 400-cell haversine head (random weights: the
speed does not depend on them) and timed on a fixed batch after warm-up. ``--families``: the
CLIP-family and self-supervised towers at their published sizes (configs written below, built
offline with random weights), their trainable parameters under each fine-tuning mode (full,
frozen, last block, LoRA r=16) and img/s at their native input size.
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


def tower(model_type: str, **values) -> dict:
    """``backbone_kwargs`` of a transformers tower from its published config values."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, **values).to_dict()
    return {"hf_config": {k: v for k, v in config.items() if k not in ("transformers_version", "architectures")}}


VIT_L14 = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096}
VIT_B = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}


def families() -> dict[str, tuple[str, dict, int]]:
    """name -> (backbone, backbone_kwargs, native input side) of each tower family at its published size."""
    return {
        "StreetCLIP / CLIP ViT-L/14-336 (transformers, projection)": (
            "geolocal/StreetCLIP",
            {
                **tower("clip_vision_model", **VIT_L14, image_size=336, patch_size=14, projection_dim=768),
                "projection": True,
            },
            336,
        ),
        "vit_large_patch14_clip_336.openai (timm)": ("vit_large_patch14_clip_336.openai", {}, 336),
        "vit_large_patch14_clip_224.datacompxl (timm)": ("vit_large_patch14_clip_224.datacompxl", {}, 224),
        "SigLIP B/16-224 (transformers)": (
            "google/siglip-base-patch16-224",
            tower("siglip_vision_model", **VIT_B, image_size=224, patch_size=16),
            224,
        ),
        "SigLIP2 B/16 NaFlex, 256 patches (transformers)": (
            "google/siglip2-base-patch16-naflex",
            tower("siglip2_vision_model", **VIT_B, num_patches=256, patch_size=16),
            256,
        ),
        "DINOv2 B/14 (transformers)": (
            "facebook/dinov2-base",
            tower("dinov2", **VIT_B, image_size=518, patch_size=14),
            224,
        ),
    }


MODES = ("full", "frozen", "last block", "LoRA r=16")


def trainable_under(config, mode: str) -> int:
    """Trainable parameters (heads included) of ``config``'s model under a fine-tuning mode (built on meta)."""
    with torch.device("meta"):
        model = build_model(config, None)
    if mode == "frozen":
        model.freeze_backbone()
    elif mode == "last block":
        model.unfreeze_last_n_blocks(1)
    elif mode == "LoRA r=16":
        model.add_lora(16)
    return model.parameter_counts()[0]


def run_families(args) -> dict:
    torch.set_num_threads(args.threads)
    results = {}
    for name, (backbone, kwargs, size) in families().items():
        config = GeoConfig(backbone=backbone, backbone_kwargs=kwargs, image_size=size, heads=head())
        trainable = {mode: trainable_under(config, mode) for mode in MODES}
        model = build_model(config, None).eval()
        x = torch.randn(args.batch_size, 3, size, size)
        params = sum(p.numel() for p in model.geo.parameters())
        speed = rate(model, x, args.steps, warmup=1)
        results[name] = {"size": size, "backbone_params_m": params / 1e6, "trainable": trainable, "img_s": speed}
        cells = "  ".join(f"{mode} {n / 1e6:.2f}M" for mode, n in trainable.items())
        print(f"{name:<50} {size}px {params / 1e6:6.1f}M  {cells}  {speed:6.2f} img/s", flush=True)
        del model
    return results


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
def rate(model, x, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
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
    parser.add_argument("--families", action="store_true", help="CLIP/SigLIP/DINOv2 towers and fine-tuning modes")
    parser.add_argument("--threads", type=int, default=2, help="--families: torch threads")
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if args.families:
        results = run_families(args)
        (out / "families.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
        return results
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
