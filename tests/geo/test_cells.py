import numpy as np
import pytest
import shapely

from geohf.geo.cells import CellPartition, fit_cells, fit_quadtree, merge_small_pieces
from geohf.geo.sphere import haversine_km

KINDS = {
    "quadtree": {"max_samples": 80, "min_samples": 10},
    "fishnet": {"cell_deg": 10.0},
    "semantic": {"min_samples": 15, "max_samples": 120},
    "semantic_optics": {"min_samples": 15, "max_samples": 120},
}


def random_land(labeller, n, seed=0):
    rng = np.random.default_rng(seed)
    lat = np.rad2deg(np.arcsin(rng.uniform(-1, 1, 4 * n)))
    lon = rng.uniform(-180, 180, 4 * n)
    land = labeller.is_land(lat, lon)
    return lat[land][:n], lon[land][:n]


@pytest.fixture(scope="module")
def land_points(labeller):
    lat, lon = random_land(labeller, 3000)
    labels, _ = labeller.label(lat, lon)
    return lat, lon, labels


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_partition_kinds(kind, land_points, labeller, tmp_path):
    lat, lon, labels = land_points
    part = fit_cells(kind, lat, lon, labels, boundaries=labeller.boundaries, **KINDS[kind])
    assert 10 < len(part) < 3000 // 3
    # every point (land, sea, poles, antimeridian) gets exactly one valid cell
    rng = np.random.default_rng(5)
    probe_lat = np.r_[lat, rng.uniform(-90, 90, 500), 90, -90, 0, 0]
    probe_lon = np.r_[lon, rng.uniform(-180, 180, 500), 0, 0, 180, -180]
    cells = part.assign(probe_lat, probe_lon)
    assert cells.shape == probe_lat.shape
    assert cells.min() >= 0 and cells.max() < len(part)
    # training points lie in their cell's polygon and counts match
    own = part.assign(lat, lon)
    np.testing.assert_array_equal(np.bincount(own, minlength=len(part)), part.cells["count"].to_numpy())
    # centroids lie within their cell or a few km from it
    geoms = part.cells.geometry.to_numpy()
    pts = shapely.points(part.cells["longitude"], part.cells["latitude"])
    outside = ~shapely.intersects(geoms, pts)
    if outside.any():
        near = shapely.get_coordinates(shapely.shortest_line(pts[outside], geoms[outside])).reshape(-1, 2, 2)
        km = haversine_km(near[:, 0, 1], near[:, 0, 0], near[:, 1, 1], near[:, 1, 0])
        assert km.max() < 100, km
    # each cell's region belongs to its country (a pair seen in the labels, e.g. PR / US-PR)
    pairs = set(zip(labels["country_code"], labels["region_code"]))
    for cc, rc in zip(part.cells["country_code"], part.cells["region_code"]):
        assert (cc, rc) in pairs
    if kind.startswith("semantic"):  # merged within countries: a cell's samples share one country
        own_cc = labels["country_code"].to_numpy()
        for c in range(len(part)):
            assert len(set(own_cc[own == c]) - {""}) <= 1
    # save -> load gives identical assignments
    path = part.save(tmp_path / "q.parquet")
    loaded = CellPartition.load(path)
    np.testing.assert_array_equal(loaded.assign(probe_lat, probe_lon), cells)
    assert loaded.kind == kind and loaded.params == {**KINDS[kind], **loaded.params}
    assert len(set(part.names)) == len(part)


def test_merge_small_pieces_joins_touching_neighbours():
    boxes = np.array([shapely.box(i, 0, i + 1, 1) for i in range(4)], dtype=object)
    counts = np.array([10, 1, 10, 10])
    merged = merge_small_pieces(boxes, counts, min_count=5)
    assert merged.max() == 2  # 4 pieces -> 3 cells
    assert merged[1] in (merged[0], merged[2])  # joined a touching neighbour
    # groups forbid merging across countries
    merged = merge_small_pieces(boxes, counts, min_count=5, groups=np.array(["A", "B", "C", "C"]))
    assert len(set(merged)) == 4


def test_to_config_is_polygon_free(labeller):
    lat, lon = random_land(labeller, 500, seed=3)
    labels, _ = labeller.label(lat, lon)
    part = fit_quadtree(lat, lon, labels, max_samples=50, min_samples=5)
    cfg = part.to_config()
    assert set(cfg) >= {"name", "latitude", "longitude", "country_code", "region"}
    assert "geometry" not in cfg and len(cfg["latitude"]) == len(part)


# ---------------------------------------------------------------- the fast paths against the old code
def _scan_merge(geometry, counts, min_count, groups=None, nearest_fallback=False):
    """merge_small_pieces as it was first written (a full scan per merge): the reference."""
    n = len(geometry)
    owner = np.arange(n)
    counts = np.asarray(counts, dtype=np.float64).copy()
    alive = np.ones(n, bool)
    a, b = shapely.STRtree(geometry).query(geometry, predicate="intersects")
    neighbours = [set() for _ in range(n)]
    for i, j in zip(a.tolist(), b.tolist()):
        if i != j:
            neighbours[i].add(j)
    centres = shapely.get_coordinates(shapely.point_on_surface(geometry)) if nearest_fallback else None
    stuck = set()
    while True:
        small = [i for i in np.flatnonzero(alive & (counts < min_count)) if i not in stuck]
        if not small:
            break
        i = min(small, key=lambda k: (counts[k], k))
        group = groups[i] if groups is not None else None
        cand = [j for j in neighbours[i] if alive[j] and (group is None or groups[j] == group)]
        if not cand and nearest_fallback:
            others = [j for j in np.flatnonzero(alive & (np.arange(n) != i)) if group is None or groups[j] == group]
            if others:
                d = haversine_km(centres[i, 1], centres[i, 0], centres[others, 1], centres[others, 0])
                cand = [others[int(np.argmin(d))]]
        if not cand:
            stuck.add(i)
            continue
        j = min(cand, key=lambda k: (counts[k], k))
        counts[j] += counts[i]
        alive[i] = False
        owner[owner == i] = j
        neighbours[j] |= neighbours[i]
        neighbours[j] -= {i, j}
        for k in neighbours[i]:
            neighbours[k].discard(i)
            if k != j:
                neighbours[k].add(j)
        stuck.discard(j)
    return np.unique(owner, return_inverse=True)[1]


def _reference_rows(part, lat, lon, labels):
    """Centroids and labels per cell the old way (a pandas mode per cell)."""

    def mode(values):
        counts = values.value_counts()
        return min(counts.index[counts == counts.max()])

    from geohf.geo.sphere import spherical_mean

    own = part.assign(lat, lon)
    rows = []
    for c, geom in enumerate(part.cells.geometry):
        sel = np.flatnonzero(own == c)
        clat, clon = spherical_mean(lat[sel], lon[sel])
        if not shapely.intersects(geom, shapely.Point(clon, clat)):
            best = sel[np.argmin(haversine_km(clat, clon, lat[sel], lon[sel]))]
            clat, clon = lat[best], lon[best]
        sub = labels.iloc[sel]
        sub = sub[sub["country_code"] != ""]
        row = {"latitude": float(clat), "longitude": float(clon), "count": len(sel)}
        if len(sub):
            inside = sub[sub["country_code"] == mode(sub["country_code"])]
            first = inside[inside["region_code"] == mode(inside["region_code"])].iloc[0]
            row.update({k: str(first[k]) for k in ("country_code", "country", "region_code", "region")})
        else:
            row.update(dict.fromkeys(("country_code", "country", "region_code", "region"), ""))
        rows.append(row)
    return rows


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_cells_match_the_reference_computation(kind, land_points, labeller):
    lat, lon, labels = land_points
    part = fit_cells(kind, lat, lon, labels, boundaries=labeller.boundaries, **KINDS[kind])
    got = part.cells.drop(columns=["geometry", "name"]).to_dict("records")
    assert got == _reference_rows(part, lat, lon, labels)


def test_merge_small_pieces_matches_the_scan(labeller):
    regions = labeller.boundaries.cx[-25:45, 30:72].reset_index(drop=True)  # Europe: ~1,000 regions, islands
    geoms = regions.geometry.to_numpy()
    counts = np.random.default_rng(0).poisson(3.0, len(geoms))
    groups = regions["country_code"].to_numpy()
    for kw in ({}, {"groups": groups, "nearest_fallback": True}):
        np.testing.assert_array_equal(
            merge_small_pieces(geoms, counts, 8, **kw), _scan_merge(geoms, counts, 8, **kw), err_msg=str(kw)
        )


def test_semantic_and_fishnet_at_tiled_index_sizes(labeller):
    """>= 20k points switch PolygonIndex to 1° tiles: fitting and assigning there agree, and
    fishnet cells (unions with zero-area holes that break GEOS's rectangle clip) work."""
    lat, lon = random_land(labeller, 25_000, seed=7)
    labels, _ = labeller.label(lat, lon)
    for kind, params in (
        ("semantic", {"min_samples": 50, "max_samples": 1000}),
        ("semantic_optics", {"min_samples": 50, "max_samples": 300}),  # OPTICS splits: an index of new tiles
        ("fishnet", {"cell_deg": 10.0}),
    ):
        part = fit_cells(kind, lat, lon, labels, boundaries=labeller.boundaries, **params)
        own = part.assign(lat, lon)  # a fresh index over the stored polygons, tiled
        np.testing.assert_array_equal(np.bincount(own, minlength=len(part)), part.cells["count"].to_numpy())
        fresh = CellPartition(kind, part.cells.copy(), part.params)
        small = fresh.assign(lat[:5000], lon[:5000])  # the untiled index
        np.testing.assert_array_equal(small, own[:5000])


def test_fishnet_cells_are_cached_on_disk(labeller, tmp_path, monkeypatch):
    from geohf.geo import cells

    monkeypatch.setenv("GEOHF_CACHE", str(tmp_path))
    lat, lon = random_land(labeller, 2000, seed=2)
    europe = labeller.boundaries.cx[-25:45, 30:72].reset_index(drop=True)
    cells.clear_cache()
    first = fit_cells("fishnet", lat, lon, boundaries=europe, cell_deg=5.0)
    files = list((tmp_path / "cells").glob("fishnet-*.parquet"))
    assert len(files) == 1
    cells.clear_cache()  # memory only: the next fit reads the file
    second = fit_cells("fishnet", lat, lon, boundaries=europe, cell_deg=5.0)
    assert shapely.equals_exact(first.cells.geometry.to_numpy(), second.cells.geometry.to_numpy(), 0).all()
    files[0].write_bytes(b"not parquet")  # a broken cache file is recomputed, not trusted
    cells.clear_cache()
    third = fit_cells("fishnet", lat, lon, boundaries=europe, cell_deg=5.0)
    assert third.names == first.names
    fit_cells("fishnet", lat, lon, boundaries=europe.iloc[:300], cell_deg=5.0)  # other boundaries, other key
    assert len(list((tmp_path / "cells").glob("fishnet-*.parquet"))) == 2
    cells.clear_cache(disk=True)
    assert not list((tmp_path / "cells").glob("*"))


def test_drop_degenerate_holes_keeps_real_holes():
    from geohf.geo.cells import _drop_degenerate_holes

    real = [(1, 1), (2, 1), (2, 2), (1, 2), (1, 1)]
    sliver = [(3, 3), (3.5, 3.7), (3, 3), (3, 3)]  # zero area
    poly = shapely.Polygon([(0, 0), (5, 0), (5, 5), (0, 5)], [real, sliver])
    multi = shapely.MultiPolygon([poly, shapely.box(10, 10, 11, 11)])
    out = _drop_degenerate_holes(np.array([poly, multi, shapely.box(0, 0, 1, 1)], dtype=object))
    assert [len(p.interiors) for p in (out[0], out[1].geoms[0])] == [1, 1]
    assert out[0].area == poly.area and out[1].geom_type == "MultiPolygon"
    assert out[2] is not None and out[2].equals(shapely.box(0, 0, 1, 1))
