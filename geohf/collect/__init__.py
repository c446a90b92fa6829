"""Collecting street-level images: sampling plans, Street View / Mapillary clients, a resumable runner.

``geohf collect plan`` samples points inside regions (:mod:`.regions`, :mod:`.plan`);
``geohf collect run`` asks a provider (:mod:`.providers`) for the images around each point,
politely (:mod:`.http`), and writes an ``imagefolder`` (:mod:`.folder`) that survives kills
(:mod:`.state`, :mod:`.run`). The names load on first use.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {
    "AccessDenied": ".http",
    "BudgetExhausted": ".http",
    "HttpClient": ".http",
    "HttpConfig": ".http",
    "QuotaExceeded": ".http",
    "RequestFailed": ".http",
    "StopCollect": ".http",
    "PLAN_COLUMNS": ".plan",
    "load_plan": ".plan",
    "make_plan": ".plan",
    "save_plan": ".plan",
    "PROVIDERS": ".providers",
    "Mapillary": ".providers",
    "MissingKeyError": ".providers",
    "StreetView": ".providers",
    "ViewOptions": ".providers",
    "resolve_key": ".providers",
    "Region": ".regions",
    "fishnet": ".regions",
    "parse_regions": ".regions",
    "CollectConfig": ".run",
    "CollectReport": ".run",
    "Estimate": ".run",
    "collect": ".run",
    "estimate": ".run",
}

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

__getattr__ = lazy_getattr(__name__, _LAZY)
