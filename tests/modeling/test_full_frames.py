"""Full frames: non-square inputs (``image_size=[H, W]``) and ``resize_mode`` crop / pad / stretch, the same in the
image processor, the training transforms, ``pipeline`` and the saved folder; ViTs at non-square grids (timm and
transformers); test-time augmentation."""

import numpy as np
import pytest
import timm.data
import torch
from datasets import Dataset, Features
from datasets import Image as ImageFeature
from PIL import Image
from test_backbones import CELLS, heads
from transformers import pipeline

from geohf.data.transforms import AugmentConfig, example_transform, median_aspect, train_transform
from geohf.errors import UserError
from geohf.modeling import GeoImageProcessor, GeoModelForImageGeolocation, build_model
from geohf.modeling.factory import make_config
from geohf.modeling.image_processing_geohf import parse_image_size, parse_tta, reference_tolerance


def street_image(seed: int = 0, size=(320, 180)) -> Image.Image:
    """A 320x180 frame with a left-to-right gradient (so crops and letterboxes differ) and noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    arr = np.clip(ramp * np.ones((h, 1, 3)) * 0.6 + rng.integers(0, 100, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def test_image_size_parsing():
    assert parse_image_size("224") == 224 and parse_image_size(96) == 96
    assert parse_image_size("96x160") == (96, 160) and parse_image_size([96, 160]) == (96, 160)
    assert parse_image_size("128x128") == 128
    for bad in ("0x5", "abc", "96x", "1x2x3", "-3", 0):
        with pytest.raises(UserError, match="HEIGHTxWIDTH"):
            parse_image_size(bad)
    with pytest.raises(UserError, match="resize mode"):
        GeoImageProcessor(image_size=32, resize_mode="letterbox")
    assert parse_tta("crops,flip") == ("flip", "crops") and parse_tta("none") == ()
    with pytest.raises(UserError, match="unknown"):
        parse_tta("flip,rotate")


@pytest.mark.parametrize("mode", ["crop", "pad", "stretch"])
def test_processor_is_timms_transform_for_each_mode(mode):
    image = street_image()
    proc = GeoImageProcessor(image_size=[48, 80], resize_mode=mode, crop_pct=0.9, interpolation="bilinear")
    out = proc(image)["pixel_values"][0]
    assert out.shape == (3, 48, 80)
    ref = timm.data.create_transform(**proc.data_config, is_training=False)(image)
    assert (out - ref).abs().max() <= reference_tolerance(proc.image_std)
    if mode == "pad":  # a 16:9 frame in a 5:3 box: rows of the mean colour above and below, ~0 once normalised
        whole = GeoImageProcessor(image_size=[48, 80], resize_mode=mode).transform(image)
        assert whole[:, 0].abs().max() < 0.01 and whole[:, -1].abs().max() < 0.01 and whole[:, 24].abs().max() > 0.5
    # a wide frame loses its sides only when cropped
    assert proc.resized_shape(180, 320) == {"crop": (53, 94), "pad": (50, 88), "stretch": (53, 88)}[mode]


def test_modes_see_different_parts_of_the_frame():
    image = street_image()
    views = {m: GeoImageProcessor(image_size=64, resize_mode=m).transform(image) for m in ("crop", "pad", "stretch")}
    assert not torch.allclose(views["crop"], views["stretch"]) and not torch.allclose(views["pad"], views["stretch"])


@pytest.fixture(scope="module")
def wide_models(tmp_path_factory):
    """A CNN saved at 96x160 in each resize mode: mode -> (folder, model)."""
    out = {}
    for mode in ("crop", "pad", "stretch"):
        torch.manual_seed(0)
        config = make_config("resnet18", heads(), image_size="96x160", resize_mode=mode, crop_pct=1.0)
        model = build_model(config, None).eval()
        folder = tmp_path_factory.mktemp(f"wide-{mode}")
        model.save_pretrained(folder)
        GeoImageProcessor.from_config(config).save_pretrained(folder)
        out[mode] = (folder, model)
    return out


@pytest.mark.parametrize("mode", ["crop", "pad", "stretch"])
def test_training_transform_processor_and_pipeline_agree(wide_models, mode):
    folder, model = wide_models[mode]
    reloaded = GeoImageProcessor.from_pretrained(folder)
    assert reloaded.image_size == [96, 160] and reloaded.resize_mode == mode
    assert GeoModelForImageGeolocation.from_pretrained(folder).config.input_hw == (96, 160)
    image = street_image(1)
    # the trainer's eval transform (and the training transform without augmentations) on a dataset row
    ds = Dataset.from_dict({"image": [image]}, features=Features({"image": ImageFeature()}))
    processor = GeoImageProcessor.from_config(model.config)
    row = ds.with_transform(example_transform(processor.transform, [], None))[0]["pixel_values"]
    plain = train_transform(processor, AugmentConfig())(image)
    assert torch.equal(row, plain) and row.shape == (3, 96, 160)
    assert (row - reloaded(image)["pixel_values"][0]).abs().max() <= reference_tolerance(processor.image_std)
    with torch.no_grad():
        probs = model(pixel_values=row[None]).logits.softmax(-1)[0]
    top = pipeline("image-classification", model=str(folder))(image, top_k=len(CELLS["name"]))
    by_label = {t["label"]: t["score"] for t in top}
    assert [by_label[name] for name in CELLS["name"]] == pytest.approx(probs.tolist(), abs=1e-5)


def test_train_transform_augments_at_the_frame_size():
    image = street_image(2)
    for mode in ("crop", "pad", "stretch"):
        proc = GeoImageProcessor(image_size=[48, 80], resize_mode=mode)
        fn = train_transform(proc, AugmentConfig(random_resized_crop=0.5, color_jitter=0.2))
        assert fn(image).shape == (3, 48, 80)
        fn = train_transform(proc, AugmentConfig(color_jitter=0.01))
        # no random crop: the eval geometry (up to the jitter)
        assert (fn(image) - proc.transform(image)).abs().mean() < 0.1


VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2}


@pytest.mark.parametrize(
    "backbone, kwargs",
    [("resnet18", None), ("vit_tiny_patch16_224", VIT), ("transformers-vit", None), ("transformers-clip", None)],
)
def test_models_train_save_and_reload_at_96x160(backbone, kwargs, tmp_path):
    if backbone.startswith("transformers-"):
        from transformers import CLIPVisionConfig, CLIPVisionModel, ViTConfig, ViTModel

        tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
        tiny.update(patch_size=16, image_size=32)
        cls, cfg = (ViTModel, ViTConfig) if backbone.endswith("vit") else (CLIPVisionModel, CLIPVisionConfig)
        cls(cfg(**tiny)).save_pretrained(tmp_path / "tower")
        backbone = str(tmp_path / "tower")
    torch.manual_seed(0)
    config = make_config(backbone, heads(), backbone_kwargs=kwargs, image_size="96x160", resize_mode="pad")
    if "vit_" in backbone:  # timm's ViT is built for the 6x10 grid of patches
        assert config.backbone_kwargs["img_size"] == [96, 160]
    model = build_model(config, None)
    x = torch.randn(2, 3, 96, 160)
    out = model(pixel_values=x, labels=torch.tensor([0, 1]), coordinates=torch.tensor([[48.0, 2.0], [52.0, 13.0]]))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.logits.shape == (2, len(CELLS["name"]))
    model.eval()
    model.save_pretrained(tmp_path / "model")
    reloaded = GeoModelForImageGeolocation.from_pretrained(tmp_path / "model").eval()
    with torch.no_grad():
        assert torch.allclose(model(pixel_values=x).logits, reloaded(pixel_values=x).logits, atol=1e-5)


def test_timm_vit_weights_resample_to_the_new_grid(tmp_path):
    """A 224 checkpoint file loads into the 96x160 ViT: its position embeddings resampled by timm's filter."""
    from safetensors.torch import save_file

    from geohf.modeling.backbones import create_backbone, load_backbone_weights

    square = create_backbone("vit_tiny_patch16_224", **VIT)
    save_file(square.state_dict(), tmp_path / "vit.safetensors")
    wide = create_backbone("vit_tiny_patch16_224", **VIT, img_size=[96, 160])
    load_backbone_weights(wide, "vit_tiny_patch16_224", tmp_path / "vit.safetensors")
    assert wide.pos_embed.shape[1] == 1 + 6 * 10
    assert torch.equal(wide.cls_token, square.cls_token)


def test_median_aspect_reads_the_training_split():
    ds = Dataset.from_dict({"image": [street_image(i) for i in range(3)]}, features=Features({"image": ImageFeature()}))
    assert median_aspect(ds) == pytest.approx(320 / 180)
    assert median_aspect(ds, "photo") is None


def test_wide_training_split_is_reported(caplog):
    from geohf.training.train import warn_if_wide_frames

    ds = Dataset.from_dict({"image": [street_image(0)]}, features=Features({"image": ImageFeature()}))
    config = make_config("resnet18", heads(), image_size=224)
    with caplog.at_level("WARNING", logger="geohf.training.train"):
        warn_if_wide_frames(ds, config)
    assert "--resize_mode pad --image_size 224x400" in caplog.text and "56 %" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="geohf.training.train"):
        warn_if_wide_frames(ds, make_config("resnet18", heads(), image_size="96x160", resize_mode="pad"))
    assert caplog.text == ""


def test_test_time_augmentation(wide_models):
    from geohf.inference.predictor import GeoPredictor

    folder, model = wide_models["pad"]
    image = street_image(3)
    proc = GeoImageProcessor.from_config(model.config)
    views = proc.augmented_pixel_values([image], "flip,crops")
    assert views.shape == (1, 8, 3, 96, 160)
    assert torch.equal(views[0, 0], proc.pixel_values([image])[0])  # the eval view first, its mirror after the crops
    assert torch.equal(views[0, 4], views[0, 0].flip(-1))
    assert not torch.allclose(views[0, 1], views[0, 3])  # crops along the long side: left and right differ
    plain = GeoPredictor(model, bf16=False, retrieval=False)
    flip = GeoPredictor(model, bf16=False, retrieval=False, tta="flip")
    with torch.no_grad():
        pair = model(pixel_values=torch.stack([views[0, 0], views[0, 4]])).logits.float().log_softmax(-1)
    expected = pair.mean(0).softmax(-1)
    got = flip.predict_images([image])
    assert got.probs[0] == pytest.approx(expected.numpy(), abs=1e-5)
    assert not np.allclose(got.probs, plain.predict_images([image]).probs, atol=1e-6)
    ds = Dataset.from_dict({"image": [image, street_image(4)]}, features=Features({"image": ImageFeature()}))
    both = GeoPredictor(model, bf16=False, retrieval=False, tta="flip,crops")
    assert both.predict_dataset(ds, batch_size=2).probs[0] == pytest.approx(
        both.predict_images([image]).probs[0], abs=1e-5
    )
    with pytest.raises(UserError, match="single images"):
        both.predict_images([[image, image]])


def test_bad_sizes_and_tta_are_one_line(cli, wide_models, tmp_path):
    folder, _ = wide_models["pad"]
    for flag, value, says in (
        ("--image_size", "0x5", "HEIGHTxWIDTH"),
        ("--image_size", "wide", "HEIGHTxWIDTH"),
        ("--resize_mode", "letterbox", "crop, pad, stretch"),
    ):
        result = cli("train", "--dataset", tmp_path, "--output_dir", tmp_path / "out", flag, value)
        assert result.code == 2 and len(result.errors) == 1 and says in result.errors[0] and flag in result.errors[0]
    street_image(5).save(tmp_path / "street.jpg")
    result = cli("predict", tmp_path / "street.jpg", "--model", folder, "--tta", "flip,rotate")
    assert result.code == 2 and len(result.errors) == 1 and "unknown ['rotate']" in result.errors[0]
    result = cli("predict", tmp_path / "street.jpg", "--model", folder, "--tta", "flip", "--no-retrieval")
    assert result.code == 0 and '"pred_latitude"' in result.out


def test_wide_folder_as_remote_code_and_onnx(wide_models, tmp_path):
    """The saved 96x160 ``pad`` folder: its processor and model load as remote code without geohf (the pipeline's
    scores are the model's), and ONNX export takes the fixed 96x160 input."""
    import json
    import subprocess
    import sys

    from test_backbones import HIDE_GEOHF

    folder, model = wide_models["pad"]
    image = street_image(6)
    image.save(tmp_path / "street.png")
    processor = GeoImageProcessor.from_config(model.config)
    with torch.no_grad():
        probs = model(pixel_values=processor(image)["pixel_values"]).logits.softmax(-1)[0]
    script = (
        HIDE_GEOHF
        + f"""
import json
from PIL import Image
from transformers import AutoImageProcessor, pipeline
proc = AutoImageProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
clf = pipeline("image-classification", model={str(folder)!r}, trust_remote_code=True)
top = clf(Image.open({str(tmp_path / "street.png")!r}), top_k=100)
print(json.dumps([proc.resize_mode, proc.image_size, {{t["label"]: t["score"] for t in top}}]))
"""
    )
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    mode, size, scores = json.loads(proc.stdout.strip().splitlines()[-1])
    assert mode == "pad" and size == [96, 160]
    assert [scores[name] for name in CELLS["name"]] == pytest.approx(probs.tolist(), abs=1e-5)
    ort = pytest.importorskip("onnxruntime")
    from geohf.export.onnx import export_onnx

    exported = export_onnx(folder, tmp_path / "onnx")
    assert max(exported.max_abs_diff.values()) < 1e-3
    session = ort.InferenceSession(exported.path)
    assert session.get_inputs()[0].shape[-2:] == [96, 160]
    logits = session.run(["logits"], {"pixel_values": processor(image)["pixel_values"].numpy()})[0]
    assert np.allclose(np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum(), probs.numpy(), atol=1e-4)
