"""Splitting a geocell by clustering its samples (PIGEON, Haas et al., CVPR 2024).

PIGEON splits an admin region holding too many training samples by running OPTICS on the
samples' (longitude, latitude) and tessellating the clusters with a Voronoi diagram clipped
to the region. :func:`split_by_clusters` does one such split; the semantic cell fitter
(:func:`geohf.geo.cells.fit_semantic_optics`) repeats it until every cell is small enough.

OPTICS here is :func:`optics_graph` (the reachability graph, the same as
``sklearn.cluster.compute_optics_graph`` with ``max_eps=inf``, Euclidean distance, computed
with a few vectorised operations per point instead of a tree query per point: ~30x faster)
followed by :func:`xi_clusters`, the ξ-steep cluster extraction of Ankerst et al. (SIGMOD 1999)
with Schubert & Gertz's predecessor correction (LWDA 2018): the clusters and labels of
``sklearn.cluster.cluster_optics_xi`` (tested), without importing scikit-learn (~1 s, half of a
100k-point fit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from scipy.spatial import cKDTree

_DECIMALS = np.finfo(np.float64).precision  # scikit-learn rounds distances to this many decimals


def optics_graph(xy: np.ndarray, min_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(ordering, core_distances, reachability, predecessor)`` of OPTICS over points ``xy`` (n, 2).

    Core distance: distance to the ``min_samples``-th nearest point (the point itself counts).
    Each step takes the unprocessed point of smallest reachability (ties: the lowest index)
    and lowers its unprocessed points' reachability to ``max(core distance, distance)``.
    """
    xy = np.ascontiguousarray(xy, dtype=np.float64)
    n = len(xy)
    k = min(max(int(min_samples), 1), n)
    dist = cKDTree(xy).query(xy, k=k)[0]
    core = np.around(dist.reshape(n, -1)[:, -1], decimals=_DECIMALS)
    reach = np.full(n, np.inf)
    pred = np.full(n, -1, dtype=np.int64)
    open_reach = np.full(n, np.inf)  # reachability of unprocessed points, inf once processed
    done = np.zeros(n, bool)
    ordering = np.empty(n, dtype=np.int64)
    x, y = xy[:, 0], xy[:, 1]
    point = 0
    for step in range(n):
        ordering[step] = point
        done[point] = True
        open_reach[point] = np.inf
        d = np.sqrt((x - x[point]) ** 2 + (y - y[point]) ** 2)
        np.maximum(d, core[point], out=d)
        np.around(d, decimals=_DECIMALS, out=d)
        better = (d < reach) & ~done
        reach[better] = d[better]
        open_reach[better] = d[better]
        pred[better] = point
        if step + 1 < n:
            # argmin over unprocessed points; all inf (cannot happen with max_eps=inf) -> lowest index
            point = int(np.argmin(open_reach))
            if done[point]:
                point = int(np.flatnonzero(~done)[0])
    return ordering, core, reach, pred


@dataclass
class _SteepDown:
    """A ξ-steep downward area of the reachability plot (positions ``start``..``end``)."""

    start: int
    end: int
    mib: float = 0.0  # the highest reachability seen after it so far ("maximum in between")


def _area_end(steep: np.ndarray, against: np.ndarray, start: int, min_samples: int) -> int:
    """Last position of the maximal ξ-steep area that begins at ``start``: it goes on through steep
    points and through at most ``min_samples`` level or gentle points in a row, and ends before the
    first point that goes ``against`` its direction."""
    end, gentle = start, 0
    for i in range(start, len(steep)):
        if steep[i]:
            end, gentle = i, 0
        elif against[i]:
            break
        else:
            gentle += 1
            if gentle > min_samples:
                break
    return end


def xi_clusters(
    reach: np.ndarray, pred: np.ndarray, ordering: np.ndarray, min_samples: int, xi: float
) -> list[tuple[int, int]]:
    """The ξ-clusters of an OPTICS result: ``(first, last)`` positions in ``ordering``, the clusters
    ending at each steep upward area nested inner first (Ankerst et al. 1999, section 4.3, with the
    corrections of Definitions 9 and 11 that scikit-learn makes, and Schubert & Gertz 2018's
    predecessor correction). ``reach`` and ``pred`` are per point, as :func:`optics_graph` returns
    them; clusters have at least ``min_samples`` points."""
    n = len(ordering)
    r = np.append(np.asarray(reach, dtype=np.float64)[ordering], np.inf)  # the reachability plot
    position = np.empty(n + 1, dtype=np.int64)
    position[ordering] = np.arange(n)
    position[n] = -1  # no predecessor
    pred_pos = position[np.asarray(pred)[ordering]]  # where each point's predecessor stands in the plot
    keep = 1.0 - xi
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = r[:-1] / r[1:]
    up, down = ratio < 1, ratio > 1
    steep_up, steep_down = ratio <= keep, ratio >= 1 / keep

    def trimmed(first: int, last: int) -> tuple[int, int] | None:
        # predecessor correction: the last point's predecessor must lie in the cluster
        while first < last:
            if r[first] > r[last] or first <= pred_pos[last] < last:
                return first, last
            last -= 1
        return None

    downs: list[_SteepDown] = []
    clusters: list[tuple[int, int]] = []
    pos, mib = 0, 0.0
    for steep in np.flatnonzero(steep_up | steep_down):
        if steep < pos:  # inside an area already walked
            continue
        mib = max(mib, r[pos : steep + 1].max())
        # steep down areas that a higher point has since cut off from what follows are dropped
        downs = [] if np.isinf(mib) else [d for d in downs if mib <= r[d.start] * keep]
        for d in downs:
            d.mib = max(d.mib, mib)
        if steep_down[steep]:
            end = _area_end(steep_down, up, steep, min_samples)
            downs.append(_SteepDown(steep, end))
            pos = end + 1
            mib = r[pos]
            continue
        up_end = _area_end(steep_up, down, steep, min_samples)
        pos = up_end + 1
        mib = r[pos]
        after = r[up_end + 1]  # the reachability just after the steep up area
        found = []
        for d in downs:
            if after * keep < d.mib:
                continue
            first, last, top = d.start, up_end, r[d.start]
            if top * keep >= after:  # the down area starts higher: start where it comes down to `after`
                while first < d.end and r[first + 1] > after:
                    first += 1
            elif after * keep >= top:  # the up area ends higher: end where it rises above `top`
                while last > steep and r[last - 1] > top:
                    last -= 1
            span = trimmed(first, last)
            if span is None:
                continue
            first, last = span
            if last - first + 1 >= min_samples and first <= d.end and last >= steep:
                found.append((first, last))
        clusters.extend(reversed(found))  # the innermost (latest down area) first
    return clusters


def optics_labels(xy: np.ndarray, min_samples: int, xi: float) -> np.ndarray:
    """OPTICS cluster label per point (``-1``: noise), as ``sklearn.cluster.OPTICS(min_samples, xi=xi)``:
    each ξ-cluster that holds no point of an earlier (inner) one becomes a label."""
    min_samples = min(int(min_samples), len(xy))
    ordering, _, reach, pred = optics_graph(xy, min_samples)
    in_plot, label = np.full(len(xy), -1, dtype=np.int64), 0
    for first, last in xi_clusters(reach, pred, ordering, min_samples, xi):
        if (in_plot[first : last + 1] < 0).all():
            in_plot[first : last + 1] = label
            label += 1
    labels = np.empty_like(in_plot)
    labels[ordering] = in_plot
    return labels


def polygonal(geom):
    """The polygon parts of ``geom`` (an overlay can leave lines and points) as one geometry."""
    parts = shapely.get_parts(geom)
    parts = parts[(shapely.get_type_id(parts) == 3) & (shapely.area(parts) > 0)]
    if len(parts) == 0:
        return shapely.Polygon()
    return parts[0] if len(parts) == 1 else shapely.multipolygons(parts)


def _voronoi(sites: np.ndarray, geom) -> np.ndarray:
    """Voronoi polygon of each of ``sites`` (unique (x, y)), covering ``geom``'s bounds (not clipped)."""
    x0, y0, x1, y1 = shapely.bounds(geom)
    pad = max(x1 - x0, y1 - y0, 1.0)
    frame = shapely.box(
        min(x0, sites[:, 0].min()) - pad,
        min(y0, sites[:, 1].min()) - pad,
        max(x1, sites[:, 0].max()) + pad,
        max(y1, sites[:, 1].max()) + pad,
    )
    cells = shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(sites), extend_to=frame, ordered=True))
    return cells


@dataclass
class Split:
    """One split of a cell: its pieces (a partition of the cell's area) and each sample's piece."""

    pieces: list
    member: np.ndarray  # (n,) piece of every sample


def _members(pieces: list, xy: np.ndarray) -> np.ndarray:
    """Piece of every point: the first piece holding it, else the nearest piece."""
    points = shapely.points(xy)
    tree = shapely.STRtree(pieces)
    pt, piece = tree.query(points, predicate="intersects")
    member = np.full(len(xy), -1, dtype=np.int64)
    first = np.unique(pt, return_index=True)[1]
    member[pt[first]] = piece[first]
    lost = np.flatnonzero(member < 0)
    if lost.size:
        member[lost] = tree.query_nearest(points[lost], all_matches=False)[1]
    return member


def _clean_dirty_splits(pieces: list) -> list:
    """Move the detached parts of a multi-part piece (not its largest) to the touching piece
    they share most border with (PIGEON's clean-up; parts touching no other piece stay)."""
    pieces = list(pieces)
    for i in range(len(pieces)):
        parts = shapely.get_parts(pieces[i])
        if len(parts) < 2:
            continue
        keep = [int(np.argmax(shapely.area(parts)))]
        for p in range(len(parts)):
            if p == keep[0]:
                continue
            halo = shapely.buffer(parts[p], 0.01)
            overlap = np.array(
                [shapely.area(shapely.intersection(halo, g)) if j != i else 0.0 for j, g in enumerate(pieces)]
            )
            if overlap.max() <= 0:
                keep.append(p)
                continue
            j = int(np.argmax(overlap))
            pieces[j] = polygonal(shapely.union(pieces[j], parts[p]))
        pieces[i] = polygonal(shapely.multipolygons(parts[sorted(keep)]) if len(keep) > 1 else parts[keep[0]])
    return pieces


def split_by_clusters(
    geom,
    xy: np.ndarray,
    min_samples: int,
    max_samples: int,
    optics_min_samples: int,
    xi: float,
    max_points: int = 1000,
    seed: int = 0,
) -> Split | None:
    """PIGEON's split of one cell ``geom`` holding samples ``xy`` ((longitude, latitude), n x 2).

    OPTICS clusters of fewer than ``min_samples`` samples count as noise. Fewer than two
    groups (clusters, plus the noise when it holds ``min_samples``) -> ``None`` (no split).
    One cluster and the noise: the cluster's area (the union of its samples' Voronoi
    polygons, holes filled) is cut out, unless the noise holds more than ``max_samples``.
    Two clusters: the same with noise assigned to the nearest cluster mean. Three or more:
    the Voronoi polygons of the cluster means. Then detached parts are cleaned up
    (:func:`_clean_dirty_splits`) and samples assigned to the pieces that hold them.

    More than ``max_points`` samples: OPTICS runs on a random subset of that size (fixed
    ``seed``) and cluster sizes are scaled back up: OPTICS is quadratic in its points.
    ``None`` as well when the split would not shrink the cell (one piece keeps every sample).
    """
    n = len(xy)
    sub = np.arange(n)
    if n > max_points:
        sub = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    scale = n / len(sub)
    pts = xy[sub]
    labels = optics_labels(pts, optics_min_samples, xi)
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    big = ids[counts * scale >= min_samples]
    labels = np.where(np.isin(labels, big), labels, -1)
    noise = int((labels < 0).sum() * scale)
    groups = len(big) + (noise >= min_samples)
    if groups < 2:
        return None
    if len(big) == 1:
        if noise > max_samples:
            return None
    else:  # noise joins the nearest cluster mean
        means = np.stack([pts[labels == c].mean(axis=0) for c in big])
        lost = labels < 0
        if lost.any():
            labels[lost] = big[cKDTree(means).query(pts[lost])[1]]
    if len(big) <= 2:  # cut out the first cluster: the union of its samples' Voronoi polygons
        sites, first = np.unique(pts, axis=0, return_index=True)
        if len(sites) < 2:
            return None
        mine = shapely.union_all(_voronoi(sites, geom)[labels[first] == big[0]])
        inside = polygonal(shapely.intersection(mine, geom))
        if shapely.get_type_id(inside) == 3:  # one polygon: fill its holes (PIGEON)
            inside = polygonal(shapely.intersection(shapely.Polygon(inside.exterior), geom))
        pieces = [inside, polygonal(shapely.difference(geom, inside))]
    else:
        means = np.stack([pts[labels == c].mean(axis=0) for c in big])
        means = np.unique(means, axis=0)
        pieces = [polygonal(g) for g in shapely.intersection(_voronoi(means, geom), geom)]
    pieces = [p for p in _clean_dirty_splits(pieces) if not shapely.is_empty(p)]
    if len(pieces) < 2:
        return None
    member = _members(pieces, xy)
    if np.bincount(member, minlength=len(pieces)).max() == n:
        return None
    return Split(pieces, member)
