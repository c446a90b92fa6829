"""The named boundary sources ``--boundaries`` accepts, without importing geopandas (:mod:`.boundaries` owns them)."""

FULL_NAME = "natural-earth-10m"
"""``load_boundaries(FULL_NAME)`` / ``--boundaries natural-earth-10m``: the full-resolution download."""
LOWRES_NAME = "lowres"
"""``--boundaries lowres``: countries only, low resolution."""
BOUNDARY_NAMES = (FULL_NAME, LOWRES_NAME)
BOUNDARIES_HELP = (
    f"boundary file, or {FULL_NAME!r} (full-resolution download) or {LOWRES_NAME!r} (countries only); "
    "default: $GEOHF_BOUNDARIES, else the Natural Earth admin-1 shipped with geohf"
)
