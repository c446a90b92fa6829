"""semantic_optics geocells (PIGEON): OPTICS + Voronoi splits of merged admin regions."""

import geopandas as gpd
import numpy as np
import pytest
import shapely
from sklearn.cluster import OPTICS, cluster_optics_xi

from geohf.geo.cells import fit_cells, fit_semantic_optics
from geohf.geo.clusters import optics_graph, optics_labels, split_by_clusters, xi_clusters


def blobs(centres, n, scale, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(c, scale, (n, 2)) for c in centres])


@pytest.mark.parametrize("seed", [0, 1])
def test_optics_matches_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    xy = np.r_[blobs([(0, 0), (3, 1)], 120, 0.3, seed), rng.uniform(-4, 6, (160, 2))]
    ours = optics_graph(xy, 10)
    ref = OPTICS(min_samples=10, xi=0.05).fit(xy)
    np.testing.assert_array_equal(ours[0], ref.ordering_)
    np.testing.assert_allclose(ours[1], ref.core_distances_)
    np.testing.assert_allclose(ours[2][1:], ref.reachability_[1:])  # the first point's is inf in both
    np.testing.assert_array_equal(ours[3], ref.predecessor_)
    np.testing.assert_array_equal(optics_labels(xy, 10, 0.05), ref.labels_)


def _assert_partition(geom, split, n):
    """Pieces cover ``geom`` without overlaps and every sample lies in its piece."""
    pieces = np.array(split.pieces, dtype=object)
    assert np.isclose(shapely.area(shapely.union_all(pieces)), shapely.area(geom), rtol=1e-9)
    assert np.isclose(shapely.area(pieces).sum(), shapely.area(geom), rtol=1e-9)  # no overlap
    assert split.member.shape == (n,) and split.member.min() >= 0


def test_split_by_clusters_cuts_between_the_clusters():
    geom = shapely.box(0, 0, 30, 10)
    xy = blobs([(5, 5), (15, 5), (25, 5)], 100, 0.8)
    split = split_by_clusters(geom, xy, min_samples=30, max_samples=150, optics_min_samples=30, xi=0.05)
    assert split is not None and len(split.pieces) == 3  # Voronoi of the three cluster means
    _assert_partition(geom, split, len(xy))
    assert sorted(np.bincount(split.member)) == [100, 100, 100]
    for k, piece in enumerate(split.pieces):  # each piece holds its samples
        assert shapely.contains(piece, shapely.points(xy[split.member == k])).all()
    # two clusters: the first cluster's samples' Voronoi area is cut out
    two = split_by_clusters(geom, xy[:200], 30, 150, 30, 0.05)
    assert two is not None and len(two.pieces) == 2
    _assert_partition(geom, two, 200)
    assert sorted(np.bincount(two.member)) == [100, 100]


def test_split_by_clusters_subsamples_large_cells_and_refuses_one_place():
    geom = shapely.box(0, 0, 30, 10)
    xy = blobs([(5, 5), (25, 5)], 3000, 0.8)
    split = split_by_clusters(geom, xy, 100, 4000, 30, 0.05, max_points=500)
    assert split is not None
    _assert_partition(geom, split, len(xy))
    assert sorted(np.bincount(split.member)) == [3000, 3000]
    same = np.full((300, 2), 5.0)  # one place photographed 300 times: no density structure
    assert split_by_clusters(geom, same, 20, 100, 10, 0.05) is None


def toy_regions():
    """Two countries: A (three 10x10 regions in a row) and B (one 10x10 region south of them)."""
    geoms = [shapely.box(x, 0, x + 10, 10) for x in (0, 10, 20)] + [shapely.box(0, -10, 10, 0)]
    return gpd.GeoDataFrame(
        {"country_code": ["A", "A", "A", "B"], "region_code": ["A-1", "A-2", "A-3", "B-1"]}, geometry=geoms, crs=4326
    )


def toy_points(seed=0):
    rng = np.random.default_rng(seed)
    towns = blobs([(2, 2), (6, 7), (3, 8), (7, 3)], 150, 0.5, seed)  # region A-1: 600 samples in 4 towns
    few = rng.uniform((10, 0), (20, 10), (12, 2))  # 12 samples, merges into a neighbour of A
    lattice = np.stack(np.meshgrid(np.arange(20) / 2 + 20.25, np.arange(20) / 2 + 0.25), -1).reshape(-1, 2)
    south = rng.uniform((0, -10), (10, 0), (90, 2))  # B-1: 90 samples, alone in its country
    xy = np.r_[towns, few, lattice, south]
    return xy[:, 1], xy[:, 0]


def test_semantic_optics_is_a_partition_within_the_band():
    regions = toy_regions()
    lat, lon = toy_points()
    part = fit_semantic_optics(lat, lon, boundaries=regions, min_samples=60, max_samples=200)
    geoms = part.cells.geometry.to_numpy()
    counts = part.cells["count"].to_numpy()
    assert counts.sum() == lat.size and counts.max() <= 200
    # every sample lies in exactly one cell polygon, and its cell is that one
    points = shapely.points(lon, lat)
    hit_point, hit_cell = shapely.STRtree(geoms).query(points, predicate="intersects")
    assert np.array_equal(np.bincount(hit_point, minlength=lat.size), np.ones(lat.size, int))
    own = part.assign(lat, lon)
    assert np.array_equal(own[hit_point], hit_cell)
    np.testing.assert_array_equal(np.bincount(own, minlength=len(part)), counts)
    # cells do not overlap (beyond rounding) and stay inside the regions
    a, b = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    pair = a < b
    assert shapely.area(shapely.intersection(geoms[a[pair]], geoms[b[pair]])).max(initial=0) < 1e-9
    assert shapely.area(shapely.union_all(geoms)) <= shapely.area(shapely.union_all(regions.geometry)) + 1e-9
    # merged within one country: a cell lies in A or in B, never in both
    country_a = shapely.union_all(regions.geometry[:3])
    in_a = shapely.area(shapely.intersection(geoms, country_a)) / shapely.area(geoms)
    assert np.all((in_a > 1 - 1e-9) | (in_a < 1e-9))
    # A-1's 600 samples in four towns were split by OPTICS + Voronoi (not at medians: no cell
    # boundary is axis-parallel there); A-3's lattice has no clusters: median bisection splits it
    town_cells = sorted(set(own[:600]))
    assert len(town_cells) >= 3 and set(town_cells).isdisjoint(own[600:])
    edges = [np.diff(shapely.get_coordinates(geoms[c]), axis=0) for c in town_cells]
    assert any((np.abs(e) > 1e-9).all(axis=1).any() for e in edges)  # a slanted (Voronoi) edge
    assert len(set(own[612:1012])) >= 2


def test_semantic_optics_is_deterministic_and_selectable():
    regions = toy_regions()
    lat, lon = toy_points(seed=3)
    first = fit_cells("semantic_optics", lat, lon, boundaries=regions, min_samples=60, max_samples=200)
    second = fit_cells("semantic_optics", lat, lon, boundaries=regions, min_samples=60, max_samples=200)
    assert first.kind == "semantic_optics" and first.params["max_samples"] == 200
    assert first.names == second.names
    assert shapely.equals_exact(first.cells.geometry.to_numpy(), second.cells.geometry.to_numpy(), 0).all()
    np.testing.assert_array_equal(first.centroids, second.centroids)
    with pytest.raises(ValueError, match="max_cluster_points=10"):
        fit_cells("semantic_optics", lat, lon, boundaries=regions, min_samples=60, max_cluster_points=10)


@pytest.mark.parametrize("seed", range(40))
def test_xi_clusters_match_scikit_learn(seed):
    """Random blobs and background noise, some on a coarse grid (duplicates, zero distances), with
    PIGEON's and other xi and min_samples: the same clusters, in the same order, and the same labels."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 10, (rng.integers(1, 6), 2))
    size = rng.integers(5, 80)
    parts = [rng.normal(c, rng.uniform(0.1, 2), (size, 2)) for c in centres]
    xy = np.concatenate([*parts, rng.uniform(-12, 12, (rng.integers(0, 100), 2))])
    if seed % 4 == 0:
        xy = np.round(xy)
    min_samples = min(int(rng.integers(2, 20)), len(xy))
    xi = float(rng.choice([0.015, 0.025, 0.05, 0.1, 0.3]))
    ordering, _, reach, pred = optics_graph(xy, min_samples)
    labels, clusters = cluster_optics_xi(
        reachability=reach, predecessor=pred, ordering=ordering, min_samples=min_samples, xi=xi
    )
    ours = np.array(xi_clusters(reach, pred, ordering, min_samples, xi), dtype=np.int64).reshape(-1, 2)
    np.testing.assert_array_equal(ours, clusters.reshape(-1, 2))
    np.testing.assert_array_equal(optics_labels(xy, min_samples, xi), labels)


def test_optics_needs_no_scikit_learn(monkeypatch):
    import sys

    for name in {"sklearn", *(m for m in sys.modules if m.startswith("sklearn."))}:
        monkeypatch.setitem(sys.modules, name, None)  # any import of scikit-learn now fails
    labels = optics_labels(blobs([(0, 0), (8, 0)], 50, 0.5), 10, 0.05)
    first, second = set(labels[:50]) - {-1}, set(labels[50:]) - {-1}
    assert len(first) == len(second) == 1 and first != second  # one cluster in each blob
