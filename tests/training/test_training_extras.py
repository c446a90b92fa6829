"""Training knobs: resume after kill -9, early stopping, class balance, schedules, logging, hp search, push."""

import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from datasets import load_dataset

from geohf.data.transforms import AugmentConfig
from geohf.training.train import DataArguments, ModelArguments, TrainingExtras, run_training
from geohf.training.trainer import BalancedSampler, inverse_frequency, step_schedule

RUN = """
import json, os, signal, sys
import torch
from transformers import TrainerCallback, TrainingArguments
from geohf.data.transforms import AugmentConfig
from geohf.training.train import DataArguments, ModelArguments, run_training

out, dataset, kill_at, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"

class KillAt(TrainerCallback):  # kill -9 ourselves, as an OOM killer or a pre-emption would
    def on_step_begin(self, args, state, control, **kw):
        if kill_at and state.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

args = TrainingArguments(output_dir=out, max_steps=6, per_device_train_batch_size=8, learning_rate=1e-3, bf16=True,
    use_cpu=True, save_strategy="steps", save_steps=2, eval_strategy="no", report_to=[], disable_tqdm=True,
    seed=3, logging_steps=1, resume_from_checkpoint=os.path.join(out, "checkpoint-4") if resume else None)
result = run_training(ModelArguments(image_size=32, crop_pct=1.0), DataArguments(dataset=dataset),
                      AugmentConfig(random_resized_crop=0.6, hflip=0.5, color_jitter=0.2), args, callbacks=[KillAt()])
torch.save(result.model.state_dict(), os.path.join(out, "final.pt"))
print(json.dumps([h["loss"] for h in result.trainer.state.log_history if "loss" in h]))
"""


def tiny_model() -> ModelArguments:
    return ModelArguments(image_size=32, crop_pct=1.0)


def test_resume_after_kill_matches_the_uninterrupted_run(tiny_dataset, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RUN)

    def run(out, kill_at=0, resume=False):
        return subprocess.run(
            [sys.executable, str(script), str(out), str(tiny_dataset), str(kill_at), str(int(resume))],
            capture_output=True,
            text=True,
            timeout=600,
        )

    straight = run(tmp_path / "a")
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = run(tmp_path / "b", kill_at=5)
    assert killed.returncode == -9 and (tmp_path / "b" / "checkpoint-4").is_dir()
    assert not (tmp_path / "b" / "final.pt").exists()
    resumed = run(tmp_path / "b", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    losses_a = json.loads(straight.stdout.strip().splitlines()[-1])
    losses_b = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert len(losses_a) == len(losses_b) == 6 and losses_a == losses_b
    a, b = torch.load(tmp_path / "a" / "final.pt"), torch.load(tmp_path / "b" / "final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit, augmentations included


def test_early_stopping_on_median_km(tiny_dataset, tmp_path, training_args):
    args = training_args(
        tmp_path / "es",
        max_steps=20,
        learning_rate=0.0,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        save_total_limit=2,
        early_stopping_patience=2,
    )
    # lr 0 alone still moves BatchNorm's running statistics (the metric drifts); a frozen backbone keeps them fixed
    result = run_training(
        ModelArguments(image_size=32, crop_pct=1.0, freeze_backbone=True),
        DataArguments(dataset=str(tiny_dataset)),
        AugmentConfig(),
        args,
    )
    assert args.metric_for_best_model == "median_km" and args.greater_is_better is False
    assert result.trainer.state.global_step == 3  # no improvement with lr 0: stops after patience evaluations
    assert result.trainer.state.best_metric == pytest.approx(result.metrics["eval_median_km"])


def test_class_balanced_sampler_and_loss(tiny_dataset, tmp_path, training_args):
    labels = np.array([0] * 90 + [1] * 10)
    weights = inverse_frequency(labels)
    draws = Counter(labels[i] for i in BalancedSampler(weights, seed=0))
    assert abs(draws[0] - draws[1]) < 25  # even classes from a 9:1 split
    assert list(BalancedSampler(weights, seed=0)) == list(BalancedSampler(weights, seed=0))
    result = run_training(
        tiny_model(),
        DataArguments(dataset=str(tiny_dataset)),
        AugmentConfig(),
        training_args(tmp_path / "bal", class_balance="loss"),
    )
    weights = result.model.config.head("haversine").class_weights
    counts = np.bincount(load_dataset(str(tiny_dataset), split="train")["cell_quadtree"], minlength=len(weights))
    seen = counts > 0
    assert np.allclose(np.asarray(weights)[seen] * counts[seen], counts.sum() / seen.sum(), rtol=1e-4)
    sampled = run_training(
        tiny_model(),
        DataArguments(dataset=str(tiny_dataset)),
        AugmentConfig(),
        training_args(tmp_path / "samp", class_balance="sampler"),
    )
    assert isinstance(sampled.trainer._get_train_sampler(), BalancedSampler)


def test_step_schedule():
    f = step_schedule(warmup_steps=2, every=3, gamma=0.5)
    assert [f(s) for s in range(9)] == [0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]


def test_frozen_backbone_trains_heads_only(tiny_dataset, tmp_path, training_args):
    from geohf.modeling import build_model

    model_args = ModelArguments(image_size=32, crop_pct=1.0, freeze_backbone=True)
    model = run_training(
        model_args,
        DataArguments(dataset=str(tiny_dataset)),
        AugmentConfig(),
        training_args(tmp_path / "probe", learning_rate=1e-2),
    ).model
    after = model.state_dict()
    fresh = build_model(model.config, "offline").state_dict()  # the ImageNet weights it started from
    backbone = [k for k in after if k.startswith("geo.")]
    assert all(torch.equal(fresh[k], after[k]) for k in backbone)  # BatchNorm statistics included
    assert not torch.equal(fresh["heads.haversine.fc.weight"], after["heads.haversine.fc.weight"])


def test_logging_to_tensorboard_and_trackio(tiny_dataset, tmp_path, monkeypatch, training_args):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    args = training_args(tmp_path / "log", report_to=["tensorboard", "trackio"], project="geohf-test", run_name="tiny")
    run_training(tiny_model(), DataArguments(dataset=str(tiny_dataset)), AugmentConfig(), args)
    events = list((tmp_path / "log").rglob("events.out.tfevents.*"))  # output_dir/runs/...
    assert events and events[0].stat().st_size > 0
    assert list((tmp_path / "trackio").rglob("*")), "trackio wrote nothing"


def test_hyperparameter_search(tiny_dataset, tmp_path, training_args):
    args = training_args(tmp_path / "hp", eval_strategy="steps", eval_steps=2)
    result = run_training(
        tiny_model(),
        DataArguments(dataset=str(tiny_dataset)),
        AugmentConfig(),
        args,
        TrainingExtras(hp_search_trials=2),
    )
    hp = result.metrics["hp_search"]
    assert hp["trials"] == 2 and set(hp["hyperparameters"]) == {"learning_rate", "weight_decay"}
    assert args.learning_rate == hp["hyperparameters"]["learning_rate"]  # the final run used the best values


def test_streaming(tiny_dataset, tmp_path, training_args):
    result = run_training(
        tiny_model(),
        DataArguments(dataset=str(tiny_dataset), streaming=True),
        AugmentConfig(),
        training_args(tmp_path / "stream"),
    )
    assert result.trainer.state.global_step == 2
    with pytest.raises(ValueError, match="max_steps"):
        run_training(
            tiny_model(),
            DataArguments(dataset=str(tiny_dataset), streaming=True),
            AugmentConfig(),
            training_args(tmp_path / "stream2", max_steps=-1, num_train_epochs=1),
        )


def test_push_to_hub_uploads_one_folder_and_never_stores_the_token(tiny_dataset, tmp_path, monkeypatch, training_args):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw))

    monkeypatch.setattr("geohf.hub.publish.HfApi", FakeApi)
    secret = "hf_FAKEsecretTOKENvalue1234567890"
    out = tmp_path / "pushed"
    args = training_args(
        out,
        push_to_hub=True,
        hub_model_id="org/geo-model",
        hub_token=secret,
        hub_private_repo=True,
        eval_strategy="steps",
        eval_steps=2,
    )
    run_training(tiny_model(), DataArguments(dataset=str(tiny_dataset)), AugmentConfig(), args)
    assert calls[0] == ("init", secret)
    assert calls[1] == ("create_repo", "org/geo-model", {"repo_type": "model", "private": True, "exist_ok": True})
    upload = calls[2][1]
    assert upload["folder_path"] == str(out) and upload["repo_id"] == "org/geo-model" and len(calls) == 3
    from geohf.hub.publish import files_to_upload

    files = set(files_to_upload(out))
    assert {
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "cells/quadtree.parquet",
        "modeling_geohf.py",
        "train_metrics.json",
    } <= files
    assert "training_args.bin" not in files
    card = (out / "README.md").read_text()
    assert "model-index" in card and "median error (km)" in card and "Privacy" in card
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_trained_model_and_dataset_from_a_local_hub(tiny_model_dir, tiny_dataset, hub, tmp_path):
    hub.publish(tiny_model_dir, "org/geo-model", "model")
    hub.publish(tiny_dataset, "org/blue-marble", "dataset")
    script = """
import json, geohf
from datasets import load_dataset
from transformers import AutoModelForImageClassification, pipeline
geohf.register()  # the Auto classes and pipeline("image-geolocation")
ds = load_dataset("org/blue-marble", revision="main", split="test")
model = AutoModelForImageClassification.from_pretrained("org/geo-model", revision="main")
geo = pipeline("image-geolocation", model="org/geo-model", revision="main")
clf = pipeline("image-classification", model="org/geo-model", revision="main")
r = geo(ds[0]["image"])
print(json.dumps({"rows": len(ds), "country": r["pred_country_code"], "label": clf(ds[0]["image"])[0]["label"],
                  "type": type(model).__name__, "cells": sorted(model.cell_partitions)}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**hub.env(tmp_path / "hf"), "PATH": os.environ["PATH"]},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rows"] == 20 and out["type"] == "GeoModelForImageGeolocation" and out["country"] and out["label"]
    assert out["cells"] == sorted(p.stem for p in (tiny_model_dir / "cells").iterdir())  # the partition, from the Hub


def test_best_metric_direction_with_and_without_the_eval_prefix():
    from geohf.training.trainer import lower_is_better

    assert lower_is_better("median_km") and lower_is_better("eval_median_km") and lower_is_better("eval_loss")
    assert not lower_is_better("eval_geoscore") and not lower_is_better("country_accuracy")


def test_continuing_from_a_model_keeps_its_cells(tiny_model_dir, tiny_dataset, tmp_path, training_args):
    """``--model_name_or_path``: the continued model's folder has the cell polygons again (and loads)."""
    from geohf.inference.predictor import GeoPredictor

    out = tmp_path / "continued"
    run_training(
        ModelArguments(model_name_or_path=str(tiny_model_dir)),
        DataArguments(dataset=str(tiny_dataset)),
        AugmentConfig(),
        training_args(out),
    )
    names = sorted(p.name for p in (tiny_model_dir / "cells").iterdir())
    assert names and sorted(p.name for p in (out / "cells").iterdir()) == names
    assert GeoPredictor(str(out)).model.cell_partitions  # from_pretrained reads cells/ back
