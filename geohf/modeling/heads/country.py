"""Country and region heads (``country``, ``region``): cross-entropy over the dataset's label codes, each class
placed at the spherical mean of its samples."""

from __future__ import annotations

from ...geo.sphere import spherical_mean
from ..configuration_geohf import HeadSpec
from .base import Gazetteer, HeadData, register
from .classification import ClassificationHead


@register
class CountryHead(ClassificationHead):
    """Countries (``country_code``); each class's centroid is the spherical mean of its training samples, so the
    head also predicts coordinates."""

    kind = "country"

    @classmethod
    def spec_from_data(cls, data: HeadData) -> HeadSpec:
        column = f"{cls.kind}_code"
        rows = data.columns(cls.kind, sorted({"country_code", column, "latitude", "longitude"}))
        rows = rows[rows[column] != ""]
        if rows.empty:
            raise ValueError(f"the training split has no {column} labels for a {cls.kind} head")
        labels = sorted(set(rows[column]))
        groups = rows.groupby(column)
        centroids = [class_centroid(label, g, data.gazetteer) for label, g in groups]
        country = groups["country_code"].agg(lambda s: s.value_counts().index[0])
        codes = [country[label] for label in labels]
        cells = {
            "name": labels,
            "latitude": [round(float(c[0]), 6) for c in centroids],
            "longitude": [round(float(c[1]), 6) for c in centroids],
            "country_code": codes,
            "country": [data.gazetteer.country_name(c) for c in codes],
            "region_code": labels if cls.kind == "region" else [""] * len(labels),
            "region": [""] * len(labels),
        }
        return HeadSpec(
            name=cls.kind,
            type=cls.spec_type,
            label_column=column,
            labels=labels,
            label_country=codes,
            cells=cells,
        )


@register
class RegionHead(CountryHead):
    """Regions (``region_code``, admin-1), each with its country."""

    kind = "region"


def class_centroid(label: str, rows, gazetteer: Gazetteer) -> tuple[float, float]:
    """Spherical mean of a class's samples with coordinates; a class known only from country-only rows
    (no coordinates) takes a point inside its country's boundary polygons."""
    located = rows[rows["latitude"].notna() & rows["longitude"].notna()]
    if not located.empty:
        return spherical_mean(located["latitude"].to_numpy(), located["longitude"].to_numpy())
    point = gazetteer.inside(rows["country_code"].iloc[0])
    if point is None:
        raise ValueError(f"class {label!r} has no sample with coordinates and no boundary polygon to place it")
    return point
