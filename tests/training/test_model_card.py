"""The model card is generated from the config as saved, and says where its numbers come from."""

from __future__ import annotations

import re
from pathlib import Path

from geohf.data.transforms import AugmentConfig
from geohf.demo import rewrite_card_after_tuning
from geohf.training.train import DataArguments, ModelArguments, run_training
from geohf.training.trainer import GeoTrainingArguments

REPO = Path(__file__).resolve().parents[2]


def test_card_follows_the_config_and_names_the_split_and_time(tiny_dataset, tmp_path, training_args):
    out = tmp_path / "model"
    args = training_args(out, bf16=False, eval_strategy="steps", eval_steps=2, logging_steps=500)
    result = run_training(ModelArguments(image_size=32, crop_pct=1.0), DataArguments(str(tiny_dataset)), None, args)
    card = (out / "README.md").read_text()
    assert "probability-weighted mean of the top 5 cells" in card  # the config's rule at training time
    assert "Measured on the `validation` split during training, at step 2 of 2" in card
    config = result.model.config
    config.coordinate_top_k, config.coordinate_radius_km = 20, 3000.0  # what tune_coordinate_rule may choose
    rewrite_card_after_tuning(out, config, result.trainer, str(tiny_dataset))
    card = (out / "README.md").read_text()
    assert "top 5 cells" not in card
    assert "coordinates: probability-weighted mean of the top 20 cells within 3,000 km of the most probable one" in card
    assert "tuned on the validation split after training, so these numbers predate it" in card
    assert "github.com/geohf" not in card  # the project has no public URL
    assert "augmentations" not in card  # none were on


def test_card_names_the_training_augmentations(tiny_dataset, tmp_path, training_args):
    out = tmp_path / "model"
    run_training(
        ModelArguments(image_size=32, crop_pct=1.0),
        DataArguments(str(tiny_dataset)),
        AugmentConfig.camera(),
        training_args(out, bf16=False, logging_steps=500),
    )
    card = (out / "README.md").read_text()
    assert "training augmentations: downscale 3, jpeg_quality 30, blur 1, white_balance 0.1" in card


def _all_help(parser) -> list[str]:
    import argparse

    out = [parser.format_help()]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _all_help(sub)
    return out


def test_no_seed_numbers_in_user_facing_text():
    pattern = re.compile(r"\bseeds? \d{3}\b|\bseed-\d{3}\b", re.IGNORECASE)
    files = [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "model_card").glob("*.md")]
    files += [*(REPO / "dataset_card").glob("*.md")]
    hits = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in files for m in pattern.finditer(p.read_text())]
    from geohf.cli import build_parser
    from geohf.data.build import COLUMN_MEANINGS
    from geohf.training.train import DataArguments as D
    from geohf.training.train import ModelArguments as M

    texts = [*_all_help(build_parser()), *COLUMN_MEANINGS.values()]
    for cls in (M, D, GeoTrainingArguments, AugmentConfig):
        texts += [str(f.metadata.get("help", "")) for f in cls.__dataclass_fields__.values()]
    hits += [m.group(0) for t in texts for m in pattern.finditer(t)]
    assert not hits, hits
