"""One training run of ``tests/training/test_multiprocess.py``, started by ``accelerate launch``.

    accelerate launch --multi_gpu --num_processes 2 tests/training/multiproc_run.py '{"out": ..., "dataset": ...}'

``run_training`` (what ``scripts/train.py`` runs) on the tiny dataset with a tiny timm ViT (no BatchNorm, no
dropout, no augmentation: a step depends only on the examples of the global batch), then on rank 0 writes
``result.json`` (per-step losses, the run's metrics, the gathered eval predictions) and ``final.pt`` (the
weights). With ``epoch_ids``, also the coordinates of every example each rank's training dataloader yields in
one pass over the training split (the coordinates identify the examples of the tiny dataset).
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from geohf.data.transforms import AugmentConfig
from geohf.training.train import DataArguments, ModelArguments, run_training
from geohf.training.trainer import GeoTrainingArguments, is_node_split

TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def main(cfg: dict) -> None:
    out = cfg["out"]
    args = GeoTrainingArguments(
        output_dir=out,
        max_steps=cfg.get("max_steps", 6),
        per_device_train_batch_size=cfg["batch_size"],
        gradient_accumulation_steps=cfg.get("accumulation", 1),
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        use_cpu=True,
        save_strategy="steps" if cfg.get("save_steps") else "no",
        save_steps=cfg.get("save_steps") or 500,
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=3,
        logging_steps=1,
        resume_from_checkpoint=cfg.get("resume"),
    )
    model_args = ModelArguments(
        backbone="vit_tiny_patch16_224",
        backbone_kwargs=json.dumps(TINY_VIT),
        pretrained="none",
        image_size=32,
        crop_pct=1.0,
    )
    data_args = DataArguments(dataset=cfg["dataset"], streaming=bool(cfg.get("streaming")))
    result = run_training(model_args, data_args, AugmentConfig(), args)
    trainer = result.trainer
    seen = None
    if cfg.get("epoch_ids"):  # one pass of the dataloader the training loop read from, on every rank
        mine = [c for batch in trainer.get_train_dataloader() for c in batch["coordinates"].tolist()]
        seen = [None] * dist.get_world_size() if dist.is_initialized() else [mine]
        if dist.is_initialized():
            dist.all_gather_object(seen, mine)
    prediction = None
    if trainer.eval_dataset is not None:
        predicted = trainer.predict(trainer.eval_dataset)  # gathered over the ranks by Trainer / accelerate
        coordinates = predicted.predictions[1]
        true = predicted.label_ids[-1]  # label_names (labels, coordinates): the true coordinates, gathered
        prediction = {"coordinates": coordinates.tolist(), "true": true.tolist()}
    if trainer.is_world_process_zero():
        torch.save({k: v.detach().cpu() for k, v in result.model.state_dict().items()}, os.path.join(out, "final.pt"))
        history = trainer.state.log_history
        record = {
            "world_size": args.world_size,
            "losses": [h["loss"] for h in history if "loss" in h],
            "metrics": result.metrics,
            "prediction": prediction,
            "epoch_ids": seen,
            "node_split": is_node_split(trainer.train_dataset),
        }
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump(record, f)
    trainer.accelerator.end_training()  # as geohf train ends (geohf.commands.train.train)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
