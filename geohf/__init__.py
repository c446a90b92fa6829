"""geohf: image geolocation on the Hugging Face stack."""

__version__ = "0.1.0"

from .modeling import (  # noqa: E402
    GeoConfig,
    GeoImageProcessor,
    GeoModel,
    GeoModelForImageGeolocation,
    GeoModelOutput,
    HeadSpec,
    build_model,
    create_model,
    register_auto_classes,
)

register_auto_classes()

from .inference.pipeline import ImageGeolocationPipeline, register_pipeline  # noqa: E402

register_pipeline()

from .evaluation import Evaluation, evaluate  # noqa: E402
from .inference import GeoPredictions, GeoPredictor, predict  # noqa: E402
from .training import GeoTrainer, GeoTrainingArguments  # noqa: E402

__all__ = [
    "GeoConfig",
    "GeoImageProcessor",
    "GeoModel",
    "GeoModelForImageGeolocation",
    "GeoModelOutput",
    "Evaluation",
    "GeoPredictions",
    "GeoPredictor",
    "GeoTrainer",
    "GeoTrainingArguments",
    "HeadSpec",
    "ImageGeolocationPipeline",
    "build_model",
    "create_model",
    "evaluate",
    "predict",
]
