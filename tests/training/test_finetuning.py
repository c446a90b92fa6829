"""Fine-tuning modes: last N blocks (ViT blocks, CNN stages), LoRA (merged at save), gradient checkpointing,
and the trainable-parameter count printed at training start and written to config.json and the model card."""

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageClassification

from geohf.data.transforms import AugmentConfig
from geohf.errors import UserError
from geohf.modeling import build_model
from geohf.modeling.factory import make_config
from geohf.modeling.finetuning import merge_lora_state_dict
from geohf.training.train import DataArguments, ModelArguments, apply_finetuning_mode, run_training

sys.path.insert(0, str(Path(__file__).parents[1] / "modeling"))
from test_backbones import heads  # noqa: E402

TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
TINY_VIT_JSON = json.dumps(TINY_VIT)


def timm_vit():
    torch.manual_seed(0)
    return build_model(make_config("vit_tiny_patch16_224", heads(), backbone_kwargs=TINY_VIT), None)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> str:
    from transformers import CLIPConfig, CLIPModel

    vision = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    text = dict(vision, num_hidden_layers=1, vocab_size=99)
    path = tmp_path_factory.mktemp("clip") / "clip"
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(vision_config=dict(vision, image_size=32, patch_size=8), text_config=text)).save_pretrained(
        path
    )
    return str(path)


def clip_model(folder):
    torch.manual_seed(0)
    return build_model(make_config(folder, heads(), backbone_kwargs={"projection": True}), "hub")


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_last_block_of_a_timm_vit():
    model = timm_vit()
    model.unfreeze_last_n_blocks(1)
    names = trainable(model)
    assert any(n.startswith("geo.backbone.blocks.1.") for n in names)
    assert not any(n.startswith(("geo.backbone.blocks.0.", "geo.backbone.patch_embed")) for n in names)
    assert "geo.backbone.norm.weight" in names and "geo.backbone.pos_embed" not in names
    assert any(n.startswith("heads.") for n in names)
    out = model(pixel_values=torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1]))
    out.loss.backward()
    assert (
        model.backbone.blocks[0].attn.qkv.weight.grad is None
        and model.backbone.blocks[1].attn.qkv.weight.grad is not None
    )
    assert model.config.finetuning == {"mode": "last_n_blocks", "unfrozen_blocks": 1, "depth": 2}


def test_last_block_of_a_clip_tower(clip_folder):
    model = clip_model(clip_folder)
    model.unfreeze_last_n_blocks(1)
    names = {n.removeprefix("geo.backbone.model.") for n in trainable(model) if n.startswith("geo.")}
    assert names and all(
        n.startswith(("vision_model.encoder.layers.1.", "vision_model.post_layernorm", "visual_projection"))
        for n in names
    )
    assert "visual_projection.weight" in names and "vision_model.post_layernorm.weight" in names


@pytest.mark.parametrize(
    ("arch", "depth", "last"), [("resnet18", 4, "layer4"), ("tf_efficientnet_lite0", 7, "blocks.6")]
)
def test_last_stage_of_a_cnn_keeps_frozen_statistics(arch, depth, last):
    model = build_model(make_config(arch, heads(), image_size=32), None)
    model.unfreeze_last_n_blocks(1)
    assert model.config.finetuning["depth"] == depth
    names = trainable(model)
    assert any(n.startswith(f"geo.backbone.{last}.") for n in names)
    model.train()
    bns = [m for m in model.geo.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    frozen = [m for m in bns if not m.weight.requires_grad]
    assert frozen and not any(m.training for m in frozen)  # frozen stages keep their running statistics
    assert all(m.training for m in bns if m.weight.requires_grad)


def test_more_blocks_than_the_depth_is_refused():
    with pytest.raises(UserError, match=r"--unfreeze_last_n_blocks 3: vit_tiny_patch16_224 has 2 blocks; pass 1 to 2"):
        timm_vit().unfreeze_last_n_blocks(3)


@pytest.mark.parametrize("family", ["timm-vit", "clip"])
def test_lora_merges_into_a_plain_model_at_save(family, clip_folder, tmp_path):
    model = timm_vit() if family == "timm-vit" else clip_model(clip_folder)
    total_before = sum(p.numel() for p in model.parameters())
    model.add_lora(4)
    n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    t, total = model.parameter_counts()
    assert n_lora > 0 and t == n_lora + sum(p.numel() for p in model.heads.parameters())
    assert total == total_before + n_lora
    assert model.config.finetuning["adapted_layers"] == (4 if family == "timm-vit" else 8)
    # train the adapters a little so that the merge has something to fold in
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x = torch.randn(2, 3, 32, 32)
    for _ in range(2):
        opt.zero_grad()
        model(pixel_values=x, labels=torch.tensor([0, 1])).loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        expected = model(pixel_values=x).logits
    model.save_pretrained(tmp_path / "lora")
    from safetensors import safe_open

    with safe_open(tmp_path / "lora" / "model.safetensors", "pt") as f:
        keys = list(f.keys())  # noqa: SIM118
    assert not any("lora_" in k or "base_layer" in k for k in keys)
    assert any("lora_" in n for n, _ in model.named_parameters())  # the model in memory keeps its adapters
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "lora").eval()
    with torch.no_grad():
        got = reloaded(pixel_values=x).logits
    assert not torch.equal(expected, build_model(model.config, None).eval()(pixel_values=x).logits)
    assert torch.allclose(got, expected, atol=1e-5)
    assert reloaded.config.finetuning["mode"] == "lora"


def test_lora_needs_attention_projections():
    model = build_model(make_config("resnet18", heads(), image_size=32), None)
    with pytest.raises(UserError, match="no attention projections for LoRA.*--unfreeze_last_n_blocks"):
        model.add_lora(4)


@pytest.mark.parametrize("family", ["timm-vit", "clip"])
def test_gradient_checkpointing_gives_the_same_gradients(family, clip_folder):
    grads = []
    for checkpointing in (False, True):
        model = timm_vit() if family == "timm-vit" else clip_model(clip_folder)
        model.unfreeze_last_n_blocks(2)
        if checkpointing:
            model.gradient_checkpointing_enable()
            on = (
                model.backbone.grad_checkpointing
                if family == "timm-vit"
                else model.backbone.model.is_activation_checkpointing
            )
            assert on
        model.train()
        torch.manual_seed(1)
        model(pixel_values=torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1])).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][k], grads[1][k], atol=1e-6) for k in grads[0])


def test_the_flags_parse():
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(ModelArguments).parse_args_into_dataclasses(
        ["--unfreeze_last_n_blocks", "1", "--lora_r", "16", "--lora_alpha", "32"]
    )
    assert (args.unfreeze_last_n_blocks, args.lora_r, args.lora_alpha) == (1, 16, 32.0)


def test_one_mode_at_a_time():
    with pytest.raises(UserError, match="--freeze_backbone and --lora_r are alternatives"):
        apply_finetuning_mode(timm_vit(), ModelArguments(freeze_backbone=True, lora_r=4))


@pytest.mark.parametrize(
    ("mode", "extra"),
    [
        ({"unfreeze_last_n_blocks": 1}, {"activation_checkpointing": True}),
        ({"lora_r": 4, "lora_alpha": 8}, {"save_strategy": "steps", "save_steps": 2}),
    ],
)
def test_training_reports_the_trainable_parameters(mode, extra, tiny_dataset, training_args, tmp_path, capsys):
    out = tmp_path / "run"
    model_args = ModelArguments(
        backbone="vit_tiny_patch16_224", backbone_kwargs=TINY_VIT_JSON, pretrained="none", image_size=32, **mode
    )
    result = run_training(
        model_args, DataArguments(dataset=str(tiny_dataset)), AugmentConfig(), training_args(out, **extra)
    )
    trainable_params, total_params = result.model.parameter_counts()
    assert result.model.backbone.grad_checkpointing == bool(extra.get("activation_checkpointing"))
    printed = capsys.readouterr().out
    assert f"training {trainable_params:,} of {total_params:,} parameters" in printed
    saved = json.loads((out / "config.json").read_text())["finetuning"]
    assert saved["trainable_params"] == trainable_params and saved["total_params"] == total_params
    assert saved["mode"] == ("lora" if "lora_r" in mode else "last_n_blocks")
    card = (out / "README.md").read_text()
    assert "**Fine-tuning:**" in card and f"{trainable_params:,} of {total_params:,} parameters trained" in card
    # the saved weights are the trained ones (LoRA merged); the forward equality is tested above (Trainer's
    # accelerate wraps the in-memory model's forward in bf16 autocast)
    reloaded = AutoModelForImageClassification.from_pretrained(out).state_dict()
    expected = merge_lora_state_dict(result.model, result.model.state_dict())
    assert reloaded.keys() == expected.keys()
    assert all(torch.allclose(reloaded[k], expected[k]) for k in expected)
    if "lora_r" in mode:  # Trainer's checkpoint keeps the adapters, for --resume_from_checkpoint
        from safetensors import safe_open

        with safe_open(out / "checkpoint-2" / "model.safetensors", "pt") as f:
            assert any("lora_A" in k for k in f.keys())  # noqa: SIM118
