"""The benchmarks ``geohf evaluate --benchmark`` scores by, without importing pandas (:mod:`.benchmark` runs them)."""

BENCHMARKS = ("im2gps3k", "yfcc4k", "osv5m")
CONVENTION_NAMES = ("geohf", "osv5m", "geoclip")  # the distance conventions of --benchmark (benchmark.CONVENTIONS)
