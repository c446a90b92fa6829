"""A gazetteer over the shipped boundaries: the names of places that head kinds label their classes with."""

from __future__ import annotations

import numpy as np

from .countries import country_name


class Gazetteer:
    """Country and region of points, country names, and a point inside a country (loaded on first use)."""

    def label(self, latitude, longitude) -> dict[str, list[str]]:
        """The label columns (``country_code``, ``country``, ``region_code``, ``region``) of each point."""
        from .labelling import LABEL_COLUMNS, PointLabeller

        labels, _ = PointLabeller().label(np.asarray(latitude, np.float64), np.asarray(longitude, np.float64))
        return {c: labels[c].tolist() for c in LABEL_COLUMNS}

    def country_name(self, code: str) -> str:
        return country_name(code)

    def inside(self, country_code: str) -> tuple[float, float] | None:
        """A point inside the country's boundary polygons (``None`` for a code without any)."""
        from .boundaries import load_boundaries

        table = load_boundaries(None)
        shapes = table[table["country_code"] == country_code]
        if shapes.empty:
            return None
        point = shapes.geometry.union_all().representative_point()
        return point.y, point.x
