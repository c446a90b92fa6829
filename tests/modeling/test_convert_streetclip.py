"""``geohf convert streetclip``: StreetCLIP's zero-shot classifier as a geohf model, against CLIP's own computation.

The CLIP model is tiny and random (a character-level tokenizer, so every place name embeds differently), saved
with its tokenizer to a folder (``--clip FOLDER``). The oracle is transformers' ``CLIPModel`` forward on the
prompts and the image: its ``logits_per_image`` for one template; for an ensemble, the mean of its unit
``text_embeds`` over the templates, unit again, against its unit ``image_embeds``, times ``exp(logit_scale)``.
"""

import json
import os
import string
import subprocess
import sys

import pytest
import torch

from geohf.modeling import GeoModelForImageGeolocation

VISION = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
VISION |= {"patch_size": 16, "image_size": 32}
TEXT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
TEMPLATES = ["A Street View photo in {}.", "A photo taken in {}."]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random CLIPModel with a character-level tokenizer and CLIP's image processor."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("streetclip") / "clip"
    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(set(string.printable.strip()) | {" "}))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    ).save_pretrained(root)
    text = TEXT | {"vocab_size": len(vocab), "max_position_embeddings": 160}
    text |= {"bos_token_id": vocab["<bos>"], "eos_token_id": vocab["<eos>"], "pad_token_id": vocab["<pad>"]}
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(vision_config=VISION, text_config=text, projection_dim=24)).save_pretrained(root)
    CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def oracle(clip_dir):
    from transformers import AutoTokenizer, CLIPModel

    return CLIPModel.from_pretrained(clip_dir).eval(), AutoTokenizer.from_pretrained(clip_dir)


@pytest.fixture(scope="module")
def converted(clip_dir, tmp_path_factory):
    from geohf.cli import main

    out = tmp_path_factory.mktemp("streetclip-model") / "streetclip"
    assert main(["convert", "streetclip", str(out), "--clip", str(clip_dir)]) == 0
    return out


def _clip_logits(oracle, x, names, template):
    clip, tokenizer = oracle
    tokens = tokenizer([template.format(n) for n in names], padding=True, return_tensors="pt")
    with torch.no_grad():
        return clip(pixel_values=x, **tokens)


def test_one_template_gives_clips_own_zero_shot_logits(converted, oracle):
    model = GeoModelForImageGeolocation.from_pretrained(converted).eval()
    config = json.loads((converted / "config.json").read_text())
    (head,) = config["heads"]
    names = head["cells"]["country"]
    assert head["name"] == "country" and len(names) > 200 and "France" in names
    torch.manual_seed(1)
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        out = model(pixel_values=x)
    expected = _clip_logits(oracle, x, names, "A Street View photo in {}.").logits_per_image
    diff = (out.logits - expected).abs().max().item()
    print(f"max |geohf - CLIP| zero-shot logit, one template: {diff:.2e} (logits up to {expected.abs().max():.1f})")
    assert diff < 1e-4
    assert torch.equal(out.logits.argmax(-1), expected.argmax(-1))
    assert expected.std(-1).min() > 0.01  # the classes differ: the test can tell a wrong prompt or class order
    best = expected.argmax(-1)
    lat = torch.tensor(head["cells"]["latitude"])[best]
    assert torch.allclose(out.coordinates[:, 0], lat, atol=1e-4)  # the best country's point


def test_prompt_ensemble_and_regions(clip_dir, oracle, tmp_path):
    from geohf.modeling.converters.streetclip import ZeroShotClasses, build_streetclip

    classes = [
        ZeroShotClasses("country", ["FR", "JP", "BR"], ["France", "Japan", "Brazil"], ["FR", "JP", "BR"],
                        [46.6, 36.5, -10.8], [2.4, 138.6, -52.9], ["France", "Japan", "Brazil"], ["", "", ""]),
        ZeroShotClasses("region", ["FR-IDF", "JP-13"], ["Ile-de-France, France", "Tokyo, Japan"], ["FR", "JP"],
                        [48.7, 35.7], [2.5, 139.6], ["France", "Japan"], ["Ile-de-France", "Tokyo"]),
    ]  # fmt: skip
    model, conversion = build_streetclip(str(clip_dir), TEMPLATES, classes=classes)
    assert conversion.classes == {"country": 3, "region": 2}
    torch.manual_seed(2)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = model(pixel_values=x)
    for head in classes:
        texts, image = [], None
        for template in TEMPLATES:
            result = _clip_logits(oracle, x, head.prompts, template)
            texts.append(result.text_embeds / result.text_embeds.norm(dim=-1, keepdim=True))
            image = result.image_embeds / result.image_embeds.norm(dim=-1, keepdim=True)
        text = torch.stack(texts).mean(0)
        text = text / text.norm(dim=-1, keepdim=True)
        expected = oracle[0].logit_scale.exp() * image @ text.T
        diff = (out.logits_per_head[head.name] - expected).abs().max().item()
        print(f"max |geohf - CLIP| {head.name} logit, 2-template ensemble: {diff:.2e}")
        assert diff < 1e-4
    assert model.config.head("region").label_country == ["FR", "JP"]


def test_offline_hub_id_is_one_clear_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "geohf", "convert", "streetclip", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert "geolocal/StreetCLIP" in last and "Hugging Face Hub" in last and "--clip LOCAL_FOLDER" in last
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()
