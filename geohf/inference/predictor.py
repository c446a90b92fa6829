"""Batched prediction: images → coordinates, country, region, top-k cells with scores.

Everything is read from the model folder (config with cell centroids and their majority
country/region, image processor), so inference needs no boundaries and no dataset.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data.transforms import GeoCollator, example_transform
from ..modeling import GeoImageProcessor, GeoModelForImageGeolocation


@dataclass
class CellTable:
    """What the primary head's classes mean on the map."""

    names: list[str]
    latitude: np.ndarray
    longitude: np.ndarray
    country_code: np.ndarray
    country: np.ndarray
    region: np.ndarray
    region_code: np.ndarray

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> CellTable:
        cells = spec.get("cells")
        if not cells:
            raise ValueError(f"head {spec['name']!r} has no cells: it cannot place images on the map")
        n = len(spec["labels"])

        def col(key):
            return np.asarray(cells.get(key) or [""] * n, dtype=object)

        return cls(
            names=list(spec["labels"]),
            latitude=np.asarray(cells["latitude"], dtype=np.float64),
            longitude=np.asarray(cells["longitude"], dtype=np.float64),
            country_code=col("country_code"),
            country=col("country"),
            region=col("region"),
            region_code=col("region_code"),
        )


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CPU/CUDA when asked, a no-op otherwise."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


class GeoPredictor:
    """Runs a geohf model on batches and turns outputs into geographic predictions.

    Args:
        model: a :class:`GeoModelForImageGeolocation` (or a folder / Hub id to load one).
        processor: its image processor (default: built from the model config).
        top_k: how many cells to report per image.
        bf16: bf16 autocast; ``channels_last``: NHWC layout (both faster on recent CPUs).
    """

    def __init__(
        self,
        model: GeoModelForImageGeolocation | str,
        processor: GeoImageProcessor | None = None,
        top_k: int = 5,
        bf16: bool = True,
        channels_last: bool = True,
        device: str | None = None,
    ):
        if isinstance(model, str):
            model = GeoModelForImageGeolocation.from_pretrained(model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.processor = processor or GeoImageProcessor.from_config(model.config)
        self.top_k = top_k
        self.bf16 = bf16
        self.channels_last = channels_last
        self.cells = CellTable.from_spec(model.config.head(model.config.primary_head))

    @torch.inference_mode()
    def predict_tensors(self, pixel_values: torch.Tensor) -> dict[str, np.ndarray]:
        """Raw arrays for a preprocessed batch: ``latitude, longitude, top_index, top_score, probs``."""
        pixel_values = pixel_values.to(self.device)
        if self.channels_last and pixel_values.ndim == 4:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.bf16):
            out = self.model(pixel_values=pixel_values)
        probs = torch.softmax(out.logits.float(), dim=-1)
        k = min(self.top_k, probs.shape[-1])
        score, index = probs.topk(k, dim=-1)
        coords = out.coordinates.float().cpu().numpy()
        return {
            "latitude": coords[:, 0],
            "longitude": coords[:, 1],
            "top_index": index.cpu().numpy(),
            "top_score": score.cpu().numpy(),
            "probs": probs.cpu().numpy(),
        }

    def records(self, arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """One JSON-able dict per image from :meth:`predict_tensors` output."""
        c = self.cells
        out = []
        for i in range(arrays["latitude"].shape[0]):
            top = arrays["top_index"][i]
            best = int(top[0])
            out.append(
                {
                    "latitude": round(float(arrays["latitude"][i]), 5),
                    "longitude": round(float(arrays["longitude"][i]), 5),
                    "country_code": str(c.country_code[best]),
                    "country": str(c.country[best]),
                    "region": str(c.region[best]),
                    "score": round(float(arrays["top_score"][i][0]), 5),
                    "top_k": [
                        {
                            "label": c.names[j],
                            "score": round(float(s), 5),
                            "latitude": round(float(c.latitude[j]), 5),
                            "longitude": round(float(c.longitude[j]), 5),
                        }
                        for j, s in zip(top, arrays["top_score"][i])
                    ],
                }
            )
        return out

    def predict_images(self, images: list[Any]) -> list[dict[str, Any]]:
        """Predict a list of PIL images / arrays (one batch)."""
        pixel_values = self.processor(images, return_tensors="pt")["pixel_values"]
        return self.records(self.predict_tensors(pixel_values))

    def predict_dataset(self, dataset, image_column: str = "image", batch_size: int = 64, desc: str = "predicting"):
        """Predictions for every row of a ``datasets.Dataset`` as a DataFrame.

        Columns: ``pred_latitude, pred_longitude, pred_cell, pred_country_code,
        pred_region_code, top_index, top_score``, and the probabilities in
        ``frame.attrs["probs"]`` (N, n_cells).
        """
        data = dataset.with_transform(example_transform(self.processor.transform, [], None, image_column))
        loader = torch.utils.data.DataLoader(
            data, batch_size=batch_size, collate_fn=GeoCollator(channels_last=False), num_workers=0
        )
        parts = []
        for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
            parts.append(self.predict_tensors(batch["pixel_values"]))
        arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        best = arrays["top_index"][:, 0]
        frame = pd.DataFrame(
            {
                "pred_latitude": arrays["latitude"],
                "pred_longitude": arrays["longitude"],
                "pred_cell": best,
                "pred_country_code": self.cells.country_code[best],
                "pred_region_code": self.cells.region_code[best],
                "top_index": list(arrays["top_index"]),
                "top_score": list(arrays["top_score"]),
            }
        )
        frame.attrs["probs"] = arrays["probs"]
        return frame
