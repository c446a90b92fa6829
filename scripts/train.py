#!/usr/bin/env python
"""Fine-tune a geohf geolocation model.

    accelerate launch scripts/train.py --dataset runs/demo/dataset --output_dir runs/train \
        --heads haversine --image_size 96 --max_steps 200 --bf16 --use_cpu

Flags: geohf.training.train.ModelArguments, DataArguments, geohf.data.transforms.AugmentConfig
and transformers.TrainingArguments; or one ``--config file.yaml|json``.
"""

import sys

from geohf.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))  # geohf's error handling: user errors are one line
