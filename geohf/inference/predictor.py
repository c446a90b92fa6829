"""Batched prediction: images → coordinates, country, region, top-k classes with scores.

Everything is read from the model folder (config with cell centroids and their majority
country/region, image processor), so inference needs no boundaries and no dataset.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data.transforms import GeoCollator, example_transform
from ..geo.countries import country_name
from ..modeling import GeoImageProcessor, GeoModelForImageGeolocation


@dataclass
class CellTable:
    """What the primary head's classes mean on the map (NaN coordinates: a class without a centroid)."""

    names: list[str]
    latitude: np.ndarray
    longitude: np.ndarray
    country_code: np.ndarray
    country: np.ndarray
    region: np.ndarray
    region_code: np.ndarray

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> CellTable:
        """From a head spec: cell heads carry centroids and majority labels; country and
        region heads map their classes to countries (``label_country`` for regions)."""
        names = list(spec.get("labels") or [])
        n = len(names)
        cells = spec.get("cells") or {}
        column = spec.get("label_column")

        def col(key, default):
            return np.asarray(cells.get(key) or default, dtype=object)

        if cells:
            country_code = col("country_code", [""] * n)
        elif column == "country_code":
            country_code = np.asarray(names, dtype=object)
        else:
            country_code = np.asarray(spec.get("label_country") or [""] * n, dtype=object)
        region_code = col("region_code", names if column == "region_code" else [""] * n)
        region = col("region", [""] * n)
        nan = [np.nan] * n
        return cls(
            names=names,
            latitude=np.asarray(cells.get("latitude") or nan, dtype=np.float64),
            longitude=np.asarray(cells.get("longitude") or nan, dtype=np.float64),
            country_code=country_code,
            country=np.asarray(
                [c if cells else country_name(cc) for cc, c in zip(country_code, col("country", country_code))],
                dtype=object,
            ),
            region=region,
            region_code=region_code,
        )


def load_model_partition(source: str | None, spec: dict[str, Any]):
    """The cell partition saved with a model folder (or Hub repo) for a cell head, if there is one."""
    from pathlib import Path

    from ..geo.cells import CellPartition

    column = spec.get("label_column") or ""
    if not spec.get("cells") or not column.startswith("cell_") or not source:
        return None
    name = f"cells/{column[len('cell_') :]}.parquet"
    path = Path(source, name)
    if not path.is_file():
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, name))
        except Exception:  # noqa: BLE001 - no partition published with the model: maps fall back to centroids
            return None
    return CellPartition.load(path)


@cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_helps(device: str | None = None) -> bool:
    """Whether bf16 autocast is fast here: a CUDA GPU with bf16, or a CPU with AMX / AVX512-BF16."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return bool({"amx_bf16", "avx512_bf16"} & _cpu_flags())


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CPU/CUDA when asked, a no-op otherwise."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _round(v: float, digits: int = 5):
    return None if not np.isfinite(v) else round(float(v), digits)


def format_predictions(cells: CellTable, arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One JSON-able dict per image: coordinates, country, region, score, radius and top-k."""
    out = []
    for i in range(arrays["top_index"].shape[0]):
        top = arrays["top_index"][i]
        best = int(top[0]) if len(top) else None  # None: a regression-only model names no place
        record = {
            "latitude": _round(arrays["latitude"][i]),
            "longitude": _round(arrays["longitude"][i]),
            "country_code": str(cells.country_code[best]) if best is not None else "",
            "country": str(cells.country[best]) if best is not None else "",
            "region": str(cells.region[best]) if best is not None else "",
            "score": _round(arrays["top_score"][i][0]) if best is not None else None,
        }
        if "radius_km" in arrays:
            record["radius_km"] = _round(arrays["radius_km"][i], 1)
        record["top_k"] = [
            {
                "label": cells.names[j],
                "score": _round(s),
                "latitude": _round(cells.latitude[j]),
                "longitude": _round(cells.longitude[j]),
            }
            for j, s in zip(top, arrays["top_score"][i])
        ]
        out.append(record)
    return out


def postprocess_outputs(model, outputs, top_k: int, mass: float | None = 0.5) -> dict[str, np.ndarray]:
    """Model outputs → numpy arrays: coordinates, top-k classes and scores, probabilities, radius.

    A regression-only model has no classes: its top-k arrays are empty.
    """
    if model.config.head(model.config.primary_head)["type"] == "regression":
        probs = outputs.coordinates.new_zeros((outputs.coordinates.shape[0], 0))
    else:
        probs = torch.softmax(outputs.logits.float(), dim=-1)
    score, index = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    arrays = {"top_index": index.cpu().numpy(), "top_score": score.cpu().numpy(), "probs": probs.cpu().numpy()}
    if outputs.coordinates is not None:
        coords = outputs.coordinates.float()
        arrays["latitude"], arrays["longitude"] = coords[:, 0].cpu().numpy(), coords[:, 1].cpu().numpy()
        primary = model.heads[model.config.primary_head]
        if mass is not None and getattr(primary, "has_coordinates", False) and hasattr(primary, "confidence_radius"):
            arrays["radius_km"] = primary.confidence_radius(outputs.logits, coords, mass).cpu().numpy()
    else:
        arrays["latitude"] = arrays["longitude"] = np.full(probs.shape[0], np.nan)
    return arrays


class GeoPredictor:
    """Runs a geohf model on batches and turns outputs into geographic predictions.

    Args:
        model: a :class:`GeoModelForImageGeolocation` (or a folder / Hub id to load one).
        processor: its image processor (default: built from the model config).
        top_k: how many classes to report per image.
        bf16: bf16 autocast (default: where it is fast, see :func:`bf16_helps`);
            ``channels_last``: NHWC layout (both faster on recent CPUs).
        mass: probability mass of the reported confidence radius.
    """

    def __init__(
        self,
        model: GeoModelForImageGeolocation | str,
        processor: GeoImageProcessor | None = None,
        top_k: int = 5,
        bf16: bool | None = None,
        channels_last: bool = True,
        device: str | None = None,
        mass: float = 0.5,
    ):
        self.source = model if isinstance(model, str) else getattr(model, "name_or_path", None)
        if isinstance(model, str):
            model = GeoModelForImageGeolocation.from_pretrained(model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.processor = processor or GeoImageProcessor.from_config(model.config)
        bf16 = bf16_helps(self.device.type) if bf16 is None else bf16
        self.top_k, self.bf16, self.channels_last, self.mass = top_k, bf16, channels_last, mass
        self.cells = CellTable.from_spec(model.config.head(model.config.primary_head))

    @property
    def partition(self):
        """The primary head's cell polygons (``cells/<name>.parquet`` beside the weights), or ``None``."""
        if not hasattr(self, "_partition"):
            self._partition = load_model_partition(self.source, self.model.config.head(self.model.config.primary_head))
        return self._partition

    @torch.inference_mode()
    def predict_tensors(self, pixel_values: torch.Tensor) -> dict[str, np.ndarray]:
        """Arrays for a preprocessed batch: ``latitude, longitude, top_index, top_score, probs, radius_km``."""
        pixel_values = pixel_values.to(self.device)
        if self.channels_last and pixel_values.ndim == 4:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.bf16):
            out = self.model(pixel_values=pixel_values)
        return postprocess_outputs(self.model, out, self.top_k, self.mass)

    def records(self, arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """One JSON-able dict per image from :meth:`predict_tensors` output."""
        return format_predictions(self.cells, arrays)

    def predict_images(self, images: list[Any]) -> list[dict[str, Any]]:
        """Predict a list of PIL images / arrays (one batch); a list of lists is several views per place."""
        pixel_values = self.processor(images, return_tensors="pt")["pixel_values"]
        return self.records(self.predict_tensors(pixel_values))

    def predict_dataset(self, dataset, image_column: str = "image", batch_size: int = 64, desc: str = "predicting"):
        """Predictions for every row of a ``datasets.Dataset`` as a DataFrame.

        Columns: ``pred_latitude, pred_longitude, pred_cell, pred_country_code,
        pred_region_code, top_index, top_score``, and the probabilities in
        ``frame.attrs["probs"]`` (N, n_classes).
        """
        if len(dataset) == 0:
            raise ValueError("the dataset split is empty: nothing to predict")
        data = dataset.with_transform(example_transform(self.processor.transform, [], None, image_column))
        loader = torch.utils.data.DataLoader(
            data, batch_size=batch_size, collate_fn=GeoCollator(channels_last=False), num_workers=0
        )
        parts = [
            self.predict_tensors(batch["pixel_values"]) for batch in tqdm(loader, desc=desc, unit="batch", leave=False)
        ]
        arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        classes = arrays["top_index"].shape[1] > 0
        best = arrays["top_index"][:, 0] if classes else np.full(len(arrays["latitude"]), -1)
        frame = pd.DataFrame(
            {
                "pred_latitude": arrays["latitude"],
                "pred_longitude": arrays["longitude"],
                "pred_cell": best,
                "pred_country_code": self.cells.country_code[best] if classes else "",
                "pred_region_code": self.cells.region_code[best] if classes else "",
                "top_index": list(arrays["top_index"]),
                "top_score": list(arrays["top_score"]),
            }
        )
        if "radius_km" in arrays:
            frame["radius_km"] = arrays["radius_km"]
        frame.attrs["probs"] = arrays["probs"]
        return frame
