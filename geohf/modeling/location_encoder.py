"""GeoCLIP's location encoder (Vivanco et al., NeurIPS 2023): GPS coordinates → 512-d embeddings.

Coordinates go through the Equal Earth projection (scaled as GeoCLIP does: ``SF / 180``), then one
branch per random-Fourier-feature scale (sigma 2^0, 2^4, 2^8): 256 Gaussian frequencies → cos and
sin (512) → three ReLU layers of 1024 → a linear layer to 512; the branches' outputs are summed.

The released weights, GeoCLIP's image-side MLP, its logit scale and its 100K-point GPS gallery ship
inside the ``geoclip`` wheel (MIT): ``pip install --no-deps geoclip==1.3.0`` provides them, and
:func:`geoclip_files` finds them without importing geoclip's code.
"""

from __future__ import annotations

import csv
import importlib.machinery
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError

# Equal Earth (Šavrič, Patterson, Jenny 2018) polynomial coefficients, and GeoCLIP's scale factor
EQUAL_EARTH_A1, EQUAL_EARTH_A2, EQUAL_EARTH_A3, EQUAL_EARTH_A4 = 1.340264, -0.081106, 0.000893, 0.003796
EQUAL_EARTH_SF = 66.50336
GEOCLIP_SIGMAS = (2.0**0, 2.0**4, 2.0**8)
RFF_FREQUENCIES = 256
HIDDEN = 1024
GPS_EMBED_DIM = 512
GEOCLIP_LOGIT_SCALE_INIT = math.log(1 / 0.07)  # CLIP's initial temperature, as GeoCLIP starts
GEOCLIP_INSTALL = "pip install --no-deps geoclip==1.3.0"


def equal_earth(latlon: torch.Tensor) -> torch.Tensor:
    """(N, 2) latitude, longitude in degrees → (N, 2) Equal Earth x, y, scaled by ``SF / 180`` (float32).

    The operations follow GeoCLIP's order, so float32 results match its encoder bit for bit.
    """
    latlon = latlon.float()
    lat, lon = torch.deg2rad(latlon[:, 0]), torch.deg2rad(latlon[:, 1])
    sqrt3 = torch.sqrt(torch.tensor(3.0, device=latlon.device))
    theta = torch.asin((sqrt3 / 2) * torch.sin(lat))
    t2, t6, t8 = theta**2, theta**6, theta**8
    a1, a2, a3, a4 = EQUAL_EARTH_A1, EQUAL_EARTH_A2, EQUAL_EARTH_A3, EQUAL_EARTH_A4
    x = (2 * sqrt3 * lon * torch.cos(theta)) / (3 * (9 * a4 * t8 + 7 * a3 * t6 + 3 * a2 * t2 + a1))
    y = a4 * theta**9 + a3 * theta**7 + a2 * theta**3 + a1 * theta
    return (torch.stack((x, y), dim=1) * EQUAL_EARTH_SF) / 180


class FourierFeatures(nn.Module):
    """Random Fourier features (Tancik et al., 2020): ``[cos 2πBv, sin 2πBv]`` with B ~ N(0, sigma²).

    ``B`` (frequencies × 2) is a persistent buffer: fixed, saved with the weights, never trained.
    """

    def __init__(self, sigma: float, frequencies: int = RFF_FREQUENCIES, input_size: int = 2):
        super().__init__()
        self.sigma = float(sigma)
        self.register_buffer("b", torch.randn(frequencies, input_size) * self.sigma)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        # float32 and no autocast: at sigma 2^8 the phases reach thousands of radians
        with torch.autocast(v.device.type, enabled=False):
            phase = (2 * math.pi * v.float()) @ self.b.float().T
            return torch.cat((torch.cos(phase), torch.sin(phase)), dim=-1)


class LocationEncoderBranch(nn.Module):
    """One RFF scale: Fourier features → 3 × (Linear 1024, ReLU) → Linear 512."""

    def __init__(self, sigma: float):
        super().__init__()
        self.rff = FourierFeatures(sigma)
        self.mlp = nn.Sequential(
            nn.Linear(2 * RFF_FREQUENCIES, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.ReLU(),
        )
        self.out = nn.Linear(HIDDEN, GPS_EMBED_DIM)

    def forward(self, projected: torch.Tensor) -> torch.Tensor:
        return self.out(self.mlp(self.rff(projected)))


class LocationEncoder(nn.Module):
    """GeoCLIP's location encoder: (N, 2) latitude, longitude in degrees → (N, 512), not normalised."""

    def __init__(self, sigmas: tuple[float, ...] = GEOCLIP_SIGMAS):
        super().__init__()
        self.branches = nn.ModuleList(LocationEncoderBranch(s) for s in sigmas)

    def forward(self, latlon: torch.Tensor) -> torch.Tensor:
        projected = equal_earth(latlon)
        features = self.branches[0](projected)
        for branch in self.branches[1:]:
            features = features + branch(projected)
        return features

    @torch.no_grad()
    def encode(self, latlon: torch.Tensor, batch_size: int = 8192, progress: bool = False) -> torch.Tensor:
        """Embeddings of many points, in chunks (a tqdm bar with ``progress``), without gradients."""
        chunks = latlon.split(batch_size)
        if progress and len(chunks) > 1:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="embedding the GPS gallery", unit="chunk")
        return torch.cat([self(c) for c in chunks]) if len(latlon) else latlon.new_zeros(0, GPS_EMBED_DIM)


def geoclip_key(key: str) -> str:
    """A key of GeoCLIP's ``location_encoder_weights.pth`` as :class:`LocationEncoder` names it
    (``LocEnc{i}.capsule.0.b`` → ``branches.{i}.rff.b``, ``capsule.{1,3,5}`` → ``mlp.{0,2,4}``,
    ``head.0`` → ``out``)."""
    found = re.fullmatch(r"LocEnc(\d+)\.(capsule|head)\.(\d+)\.(b|weight|bias)", key)
    if found is None:
        raise KeyError(f"not a GeoCLIP location encoder key: {key}")
    branch, part, index, name = found.groups()
    if part == "head":
        return f"branches.{branch}.out.{name}"
    if index == "0":
        return f"branches.{branch}.rff.{name}"
    return f"branches.{branch}.mlp.{int(index) - 1}.{name}"


@dataclass(frozen=True)
class GeoClipFiles:
    """The released GeoCLIP files inside the installed ``geoclip`` wheel."""

    location_encoder: Path
    image_mlp: Path
    logit_scale: Path
    gallery: Path

    def load_location_encoder(self) -> dict[str, torch.Tensor]:
        """The location encoder's weights, keyed as :class:`LocationEncoder` names them."""
        state = torch.load(self.location_encoder, map_location="cpu", weights_only=True)
        return {geoclip_key(k): v for k, v in state.items()}

    def load_image_mlp(self) -> dict[str, torch.Tensor]:
        """The image-side MLP (Linear 768→768, ReLU, Linear 768→512), keyed as an ``nn.Sequential``."""
        return torch.load(self.image_mlp, map_location="cpu", weights_only=True)

    def load_logit_scale(self) -> torch.Tensor:
        """The trained logit scale (its log; logits are ``exp(scale) * cosine``)."""
        return torch.load(self.logit_scale, map_location="cpu", weights_only=True)

    def load_gallery(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """GeoCLIP's GPS gallery, (100000, 2) latitude, longitude in degrees (float32, as GeoCLIP reads it)."""
        return read_gallery(self.gallery, dtype)


def geoclip_files() -> GeoClipFiles | None:
    """The released files of the installed ``geoclip`` package, found on ``sys.path`` without importing it (``None``:
    not installed, or a version without these files)."""
    spec = importlib.machinery.PathFinder.find_spec("geoclip")  # sys.path only: nothing imported
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "model"
    files = GeoClipFiles(
        location_encoder=root / "weights" / "location_encoder_weights.pth",
        image_mlp=root / "weights" / "image_encoder_mlp_weights.pth",
        logit_scale=root / "weights" / "logit_scale_weights.pth",
        gallery=root / "gps_gallery" / "coordinates_100K.csv",
    )
    return files if all(os.path.isfile(p) for p in vars(files).values()) else None


def require_geoclip_files(why: str) -> GeoClipFiles:
    """The installed ``geoclip`` wheel's released files, or a :class:`UserError` saying how to get them."""
    files = geoclip_files()
    if files is None:
        raise UserError(f"{why} come from the geoclip package, which is not installed: {GEOCLIP_INSTALL}")
    return files


def read_gallery(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A GPS gallery CSV with ``LAT`` and ``LON`` columns → (N, 2) degrees."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.DictReader(f)
        if not rows.fieldnames or not {"LAT", "LON"} <= set(rows.fieldnames):
            raise ValueError(f"{path}: a GPS gallery needs LAT and LON columns, it has {rows.fieldnames}")
        values = [(float(r["LAT"]), float(r["LON"])) for r in rows]
    return torch.tensor(values, dtype=dtype).reshape(-1, 2)
