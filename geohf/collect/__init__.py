"""Collecting street-level images: sampling plans, Street View / Mapillary clients, a resumable runner.

``geohf collect plan`` samples points inside regions (:mod:`.regions`, :mod:`.plan`);
``geohf collect run`` asks a provider (:mod:`.providers`) for the images around each point,
politely (:mod:`.http`), and writes an ``imagefolder`` (:mod:`.folder`) that survives kills
(:mod:`.state`, :mod:`.run`).
"""

from .http import AccessDenied, BudgetExhausted, HttpClient, HttpConfig, QuotaExceeded, RequestFailed, StopCollect
from .plan import PLAN_COLUMNS, load_plan, make_plan, save_plan
from .providers import PROVIDERS, Mapillary, MissingKeyError, StreetView, ViewOptions, resolve_key
from .regions import Region, fishnet, parse_regions
from .run import CollectConfig, CollectReport, Estimate, collect, estimate

__all__ = [
    "PLAN_COLUMNS",
    "PROVIDERS",
    "AccessDenied",
    "BudgetExhausted",
    "CollectConfig",
    "CollectReport",
    "Estimate",
    "HttpClient",
    "HttpConfig",
    "Mapillary",
    "MissingKeyError",
    "QuotaExceeded",
    "Region",
    "RequestFailed",
    "StopCollect",
    "StreetView",
    "ViewOptions",
    "collect",
    "estimate",
    "fishnet",
    "load_plan",
    "make_plan",
    "parse_regions",
    "resolve_key",
    "save_plan",
]
