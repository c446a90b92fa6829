"""The ``evaluate`` metric module; ``evaluate.load(PATH)`` works offline."""

from pathlib import Path

PATH = str(Path(__file__).parent / "geo_metric.py")
