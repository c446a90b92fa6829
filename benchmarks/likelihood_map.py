"""A flow head's likelihood over the globe for one test tile, drawn on the Blue Marble (docs/plonk_likelihood.png).

    python benchmarks/likelihood_map.py MODEL_FOLDER [--dataset runs/bench/accuracy/bluemarble] [--index 0]
        [--resolution 5] [--tolerance 1e-3] [--guidance 1]
        [--output docs/plonk_likelihood.png]

The log-density comes from :func:`geohf.inference.maps.flow_likelihood` (the probability-flow ODE at every grid
point); the model's samples and its answer are drawn over it, with the tile's true place.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geohf.data.bluemarble import load_blue_marble  # noqa: E402
from geohf.geo.sphere import haversine_km, xyz_to_latlon  # noqa: E402
from geohf.inference.maps import flow_likelihood  # noqa: E402
from geohf.inference.predictor import GeoPredictor  # noqa: E402


def main(argv=None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from datasets import load_dataset

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--dataset", default=str(ROOT / "runs" / "bench" / "accuracy" / "bluemarble"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--index", type=int, nargs="+", default=[0], help="tiles of the split, a panel each")
    parser.add_argument("--resolution", type=float, default=5.0, help="grid step in degrees")
    parser.add_argument("--tolerance", type=float, help="the ODE's atol = rtol (default: the head's, 1e-6)")
    parser.add_argument("--guidance", type=float, help="the samples' guidance (default: the model's)")
    parser.add_argument("--output", default=str(ROOT / "docs" / "plonk_likelihood.png"))
    args = parser.parse_args(argv)

    predictor = GeoPredictor(args.model)
    head = predictor.model.heads[predictor.model.config.primary_head]
    if args.guidance is not None:
        head.settings.guidance = args.guidance
    if args.tolerance:
        head.settings.atol = head.settings.rtol = args.tolerance
    split = load_dataset(args.dataset)[args.split]
    world = load_blue_marble()
    fig, axes = plt.subplots(len(args.index), 1, figsize=(10, 5.6 * len(args.index)), squeeze=False)
    for ax, index in zip(axes[:, 0], args.index):
        row = split[index]
        start = time.perf_counter()
        grid = flow_likelihood(predictor, row["image"], args.resolution)
        seconds = time.perf_counter() - start
        pixels = predictor.processor.pixel_values([row["image"]]).to(predictor.device)
        with torch.inference_mode():
            samples = head(predictor.model.geo(pixels).embeddings)[0, :, :3].double().cpu().numpy()
        s_lat, s_lon = xyz_to_latlon(samples)
        error = float(haversine_km(row["latitude"], row["longitude"], s_lat[0], s_lon[0]))
        density = np.exp(grid.log_density - grid.log_density.max())  # relative to the highest grid point
        ax.imshow(world, extent=(-180, 180, -90, 90), origin="upper")
        shade = ax.pcolormesh(
            grid.longitudes, grid.latitudes, density, cmap="inferno", alpha=0.6, shading="nearest", vmin=0, vmax=1
        )
        ax.scatter(s_lon[1:], s_lat[1:], s=25, c="white", edgecolors="black", label="other samples")
        ax.scatter(s_lon[:1], s_lat[:1], s=70, c="cyan", edgecolors="black", label=f"answer ({error:,.0f} km off)")
        ax.scatter([row["longitude"]], [row["latitude"]], s=220, marker="*", c="lime", edgecolors="black",
                   label="true place")  # fmt: skip
        inset = ax.inset_axes((0.0, 0.0, 0.16, 0.28))
        inset.imshow(row["image"])
        inset.set_xticks([]), inset.set_yticks([])
        ax.set(xlim=(-180, 180), ylim=(-90, 90), xlabel="longitude", ylabel="latitude")
        ax.set_title(
            f"{args.split} tile {index} ({row['latitude']:.1f}, {row['longitude']:.1f}): density on a "
            f"{args.resolution:g}° grid (ODE, {seconds:.0f} s)",
            fontsize=9,
        )
        ax.legend(loc="lower right", fontsize=8)
        fig.colorbar(shade, ax=ax, fraction=0.025, label="density / highest on the grid")
        print(f"tile {index}: {error:,.0f} km, grid {grid.log_density.shape} in {seconds:.0f} s", flush=True)
    fig.tight_layout()
    out = Path(args.output)
    fig.savefig(out, dpi=90)
    return out


if __name__ == "__main__":
    main()
