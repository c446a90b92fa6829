"""Generative heads (``flow``, PLONK): Riemannian flow matching on the sphere, conditioned on the embedding.

The head learns a velocity field that carries points drawn uniformly on the unit sphere to the photo's
location (Dufour et al., "Around the World in 80 Timesteps", CVPR 2025). Its network is PLONK's AdaLN MLP
(:class:`FlowNetwork`); sampling is PLONK's Euler scheme on the sphere under its sigmoid schedule, with
classifier-free guidance; the likelihood of any point comes from the probability-flow ODE (exact divergence,
adaptive Dormand-Prince steps), so the head also gives a per-image NLL and a likelihood map on a lat/lon grid.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...geo.sphere import haversine_km, latlon_to_xyz, xyz_to_latlon
from ..configuration_geohf import HeadSpec
from .base import GeoHead, HeadData, register

POINT_RULES = ("sample", "likeliest")
LOG_AREA = math.log(4.0 * math.pi)  # the uniform density on the unit sphere is 1 / (4 pi) per steradian


@dataclass
class FlowSettings:
    """A ``flow`` head's network and sampler (``HeadSpec.flow`` in ``config.json``).

    Attributes:
        dim, depth, expansion: the AdaLN MLP's width, blocks and hidden expansion (PLONK: 512, 12, 4).
        cond_dim: the embedding width it is conditioned on (``None``: the backbone's); input_dim: 3 (the sphere).
        steps: Euler steps of the sampler; schedule_start, schedule_end, schedule_tau: its sigmoid schedule.
        guidance: classifier-free guidance scale of the samples (0: none; PLONK evaluates with 2).
        samples: samples drawn per image (the radius is their ``mass`` quantile around the point).
        point: ``sample`` (the first sample) or ``likeliest`` (the sample of highest likelihood, by ODE).
        cond_drop: share of training rows whose condition is dropped (zeroed), for guidance.
        seed: the sampler's seed; each image's noise comes from it and the image's embedding
            (:func:`embedding_seeds`), so an image gets the same samples in any batch.
        atol, rtol: tolerances of the likelihood ODE.
    """

    dim: int = 512
    depth: int = 12
    expansion: int = 4
    cond_dim: int | None = None
    input_dim: int = 3
    steps: int = 250
    schedule_start: float = -7.0
    schedule_end: float = 3.0
    schedule_tau: float = 1.0
    guidance: float = 2.0
    samples: int = 16
    point: str = "sample"
    cond_drop: float = 0.1
    seed: int = 0
    atol: float = 1e-6
    rtol: float = 1e-6

    def __post_init__(self):
        if self.point not in POINT_RULES:
            raise ValueError(f"flow head point={self.point!r}; use one of {POINT_RULES}")
        if self.input_dim != 3:
            raise ValueError(f"flow head input_dim={self.input_dim}: only the sphere in R^3 (3) is supported")
        for name in ("dim", "depth", "expansion", "steps", "samples"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"flow head {name} must be >= 1, got {getattr(self, name)}")
        if self.dim % 4:
            raise ValueError(f"flow head dim must be a multiple of 4 (its time embedding is dim / 4), got {self.dim}")
        if not 0.0 <= self.cond_drop < 1.0:
            raise ValueError(f"flow head cond_drop must be in [0, 1), got {self.cond_drop}")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> FlowSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values or {}) - known)
        if unknown:
            raise ValueError(f"flow head settings {unknown} are not known; known: {sorted(known)}")
        return cls(**(values or {}))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def schedule(self) -> SigmoidSchedule:
        return SigmoidSchedule(self.schedule_start, self.schedule_end, self.schedule_tau)


@dataclass(frozen=True)
class SigmoidSchedule:
    """PLONK's sigmoid schedule: ``gamma(t)``, how much of the data a point holds at time ``t`` (1 at t = 0,
    clipped at ``clip_min`` at t = 1), a rescaled sigmoid between ``start / tau`` and ``end / tau``."""

    start: float = -7.0
    end: float = 3.0
    tau: float = 1.0
    clip_min: float = 1e-9

    def _bounds(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo = torch.sigmoid(torch.tensor(self.start / self.tau, dtype=like.dtype, device=like.device))
        hi = torch.sigmoid(torch.tensor(self.end / self.tau, dtype=like.dtype, device=like.device))
        return lo, hi

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        lo, hi = self._bounds(t)
        s = torch.sigmoid((self.start + t * (self.end - self.start)) / self.tau)
        return ((hi - s) / (hi - lo)).clamp(self.clip_min, 1.0)

    def derivative(self, t: torch.Tensor) -> torch.Tensor:
        """d gamma / dt (of the unclipped schedule)."""
        lo, hi = self._bounds(t)
        s = torch.sigmoid((self.start + t * (self.end - self.start)) / self.tau)
        return -(self.end - self.start) / self.tau * s * (1 - s) / (hi - lo)


class AdaLNBlock(nn.Module):
    """A residual MLP block modulated by the condition: ``x + gate * mlp((1 + scale) * norm(x) + shift)``."""

    def __init__(self, dim: int, expansion: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * expansion), nn.GELU(), nn.Linear(dim * expansion, dim))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        self.mlp[-1].geohf_init = "zeros"  # each block starts as the identity
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift, gate = self.modulation(c).chunk(3, dim=-1)
        return x + gate * self.mlp((1 + scale) * self.norm(x) + shift)


class FlowNetwork(nn.Module):
    """PLONK's AdaLN MLP (``GeoAdaLNMLP``): a velocity for points ``x`` at noise level ``gamma`` under a condition.

    ``gamma`` is embedded by sinusoids of ``1000 gamma`` (``dim / 4`` channels, standardised per row) and an MLP to
    ``dim``, added to the projected condition; that sum modulates every block and the final norm.
    """

    def __init__(self, input_dim: int, dim: int, depth: int, expansion: int, cond_dim: int):
        super().__init__()
        channels = dim // 4
        exponents = torch.arange(channels // 2, dtype=torch.float32) * 2 / channels
        self.register_buffer("time_freqs", 1e-4**exponents)  # saved: a meta-device load has no init to refill it
        self.time_mlp = nn.Sequential(nn.Linear(channels, 4 * channels), nn.SiLU(), nn.Linear(4 * channels, dim))
        self.cond_proj = nn.Linear(cond_dim, dim)
        self.input_proj = nn.Linear(input_dim, dim)
        self.blocks = nn.ModuleList([AdaLNBlock(dim, expansion) for _ in range(depth)])
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.output_proj = nn.Linear(dim, input_dim)

    def time_features(self, gamma: torch.Tensor) -> torch.Tensor:
        angles = (1000.0 * gamma)[:, None] * self.time_freqs.to(gamma.dtype)[None, :]
        emb = torch.cat([angles.cos(), angles.sin()], dim=1)
        emb = (emb - emb.mean(-1, keepdim=True)) / emb.std(-1, keepdim=True)
        return self.time_mlp(emb)

    def forward(self, x: torch.Tensor, gamma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c = self.cond_proj(cond) + self.time_features(gamma.expand(x.shape[0]))
        h = self.input_proj(x)
        for block in self.blocks:
            h = block(h, c)
        scale, shift = self.final_modulation(c).chunk(2, dim=-1)
        return self.output_proj((1 + scale) * self.final_norm(h) + shift)


# Dormand-Prince 5(4): nodes, stages and the two solutions' weights (Dormand & Prince, 1980)
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


def dormand_prince(f, y: torch.Tensor, t0: float, t1: float, atol: float, rtol: float, max_steps: int = 10_000):
    """``y(t1)`` of ``dy/dt = f(t, y)`` from ``y(t0)``: adaptive Dormand-Prince 5(4) steps, each accepted when the
    RMS of its error estimate over all of ``y``, scaled by ``atol + rtol * |y|``, is at most 1."""
    dtype = torch.float64

    def rate(t: float, state: torch.Tensor) -> torch.Tensor:
        return f(torch.tensor(t, dtype=y.dtype, device=y.device), state)

    def scaled_rms(e: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
        scale = atol + rtol * torch.maximum(a.abs(), b.abs())
        return float((e.to(dtype) / scale.to(dtype)).square().mean().sqrt())

    k0 = rate(t0, y)
    # first step (Hairer, Norsett & Wanner, II.4): from the sizes of y, f(y) and f's change over a trial step
    d0, d1 = scaled_rms(y, y, y), scaled_rms(k0, y, y)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    d2 = scaled_rms(rate(t0 + h0, y + h0 * k0) - k0, y, y) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
    h = min(100 * h0, h1, t1 - t0)
    t = t0
    for _ in range(max_steps):
        if t >= t1:
            return y
        last = h >= t1 - t
        h = t1 - t if last else h
        k = [k0]
        for i in range(1, 7):
            k.append(rate(t + _DP_C[i] * h, y + h * sum(a * k[j] for j, a in enumerate(_DP_A[i]) if a)))
        y5 = y + h * sum(b * k[j] for j, b in enumerate(_DP_B5) if b)
        error = h * sum((b5 - b4) * k[j] for j, (b5, b4) in enumerate(zip(_DP_B5, _DP_B4)) if b5 != b4)
        ratio = scaled_rms(error, y, y5)
        if ratio <= 1.0:
            t, y, k0 = t1 if last else t + h, y5, k[6]  # first-same-as-last: the last stage is the next's first
        factor = 10.0 if ratio == 0 else min(10.0, max(0.2, 0.9 * ratio ** (-1 / 5)))
        h *= factor
    raise RuntimeError(f"the likelihood ODE did not reach t={t1} in {max_steps} steps (at t={t:.6f})")


def embedding_seeds(embeddings: torch.Tensor, seed: int) -> list[int]:
    """One seed per row: ``seed`` mixed with a hash of the signs of the row's centred values, so that an image's
    noise follows it into any batch, and through float rounding of its embedding (another preprocessing path,
    another kernel) unless a value that rounding flips lies within it of the row's mean."""
    rows = embeddings.detach().float()
    signs = (rows > rows.mean(-1, keepdim=True)).cpu().numpy()
    out = []
    for row in np.packbits(signs, axis=-1):
        digest = hashlib.blake2b(row.tobytes(), digest_size=8, key=str(seed).encode())
        out.append(int.from_bytes(digest.digest(), "little") & ((1 << 63) - 1))
    return out


def uniform_sphere(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points uniform on the unit sphere (normalised Gaussians), float32 on the CPU."""
    return F.normalize(torch.randn(n, 3, generator=generator), dim=-1)


@register
class FlowHead(GeoHead):
    """A generative head: Riemannian flow matching on the sphere, conditioned on the pooled embedding (PLONK).

    Its output (eval mode) is ``(B, samples, 4)``: each sample's unit vector and its log-density (per steradian,
    by ODE; NaN unless ``point="likeliest"``). ``coordinates`` is the first sample (one guided sample, PLONK's
    point) or the likeliest; ``confidence_radius`` the distance from it holding ``mass`` of the samples. Views of
    one place pool their samples (a mixture; a padded view's are NaN). In training mode the output is empty
    (``(B, 0, 4)``): the loss (:meth:`flow_loss`) reads the embeddings, as GeoCLIP's does.

    Training is PLONK's Riemannian flow matching: a point ``x0`` uniform on the sphere, the true point ``x1``,
    their geodesic at ``gamma(t)`` (``t`` uniform) and its velocity ``u``; the loss is the squared error of the
    network's velocity against ``u`` (divided by 3), with the condition zeroed for ``cond_drop`` of the rows.
    """

    kind = spec_type = "flow"

    @classmethod
    def spec_from_data(cls, data: HeadData) -> HeadSpec:
        return HeadSpec(name=cls.kind, type=cls.spec_type, flow=FlowSettings().to_dict())

    def __init__(self, spec: HeadSpec, embed_dim: int, dropout: float = 0.0):
        super().__init__(spec, embed_dim, None, dropout)
        self.settings = FlowSettings.from_dict(spec.flow)
        cond_dim = self.settings.cond_dim or embed_dim
        if cond_dim != embed_dim:
            raise ValueError(f"flow head {spec.name!r} takes {cond_dim}-d conditions; the backbone gives {embed_dim}")
        s = self.settings
        self.network = FlowNetwork(s.input_dim, s.dim, s.depth, s.expansion, cond_dim)
        self.schedule = s.schedule

    @property
    def has_coordinates(self) -> bool:
        return True

    # --- the velocity field and the sampler

    def velocity(self, x: torch.Tensor, gamma: torch.Tensor, cond: torch.Tensor, guidance: float = 0.0):
        """The network's velocity at ``x`` (N, 3), noise level ``gamma`` (scalar), condition ``cond`` (N, D);
        with ``guidance`` w: ``(1 + w) v(cond) - w v(0)`` (classifier-free guidance, the null condition zeros)."""
        if not guidance:
            return self.network(x, gamma.reshape(1), cond)
        both = self.network(torch.cat([x, x]), gamma.reshape(1), torch.cat([cond, torch.zeros_like(cond)]))
        conditional, unconditional = both.chunk(2)
        return (1 + guidance) * conditional - guidance * unconditional

    def sample(self, cond: torch.Tensor, noise: torch.Tensor, steps: int | None = None, guidance: float | None = None):
        """Points (N, 3) on the sphere from ``noise`` (N, 3) under ``cond`` (N, D): PLONK's Euler sampler, ``steps``
        steps from ``gamma(1)`` to ``gamma(0) = 1``, each ``x + (gamma' - gamma) v`` projected onto the sphere."""
        s = self.settings
        steps = s.steps if steps is None else steps
        guidance = s.guidance if guidance is None else guidance
        with torch.no_grad(), torch.autocast(cond.device.type, enabled=False):
            x, cond = noise.to(cond.device, torch.float32), cond.float()
            gammas = self.schedule(1 - torch.arange(steps + 1, dtype=torch.float32, device=cond.device) / steps)
            for now, after in zip(gammas[:-1], gammas[1:]):
                x = F.normalize(x + (after - now) * self.velocity(x, now, cond, guidance), dim=-1)
        return x

    def noise(self, embeddings: torch.Tensor, samples: int) -> torch.Tensor:
        """(N, samples, 3) starting points, uniform on the sphere, each row's from its own seed
        (:func:`embedding_seeds`)."""
        seeds = embedding_seeds(embeddings, self.settings.seed)
        return torch.stack([uniform_sphere(samples, torch.Generator().manual_seed(s)) for s in seeds])

    # --- likelihoods

    def log_density(
        self, cond: torch.Tensor, points: torch.Tensor, guidance: float = 0.0, progress: bool = False
    ) -> torch.Tensor:
        """(N,) log-density per steradian of unit vectors ``points`` (N, 3) under ``cond`` (N, D): the ODE
        ``dx/dt = gamma'(t) v(x, gamma(t))`` from the point (t = 0) to the noise (t = 1) with the exact divergence
        of the field, ``log p(x) = log p_uniform(x(1)) + integral of div``. ``guidance`` applies to the field too."""
        with torch.inference_mode(False), torch.autocast(cond.device.type, enabled=False):
            cond = cond.detach().float().clone()  # (a normal tensor, even from inference mode: it enters autograd)
            state = torch.cat([points.detach().float().clone(), torch.zeros_like(points[:, :1]).float()], dim=-1)

            def rate(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                with torch.enable_grad():
                    x = y[:, :3].detach().requires_grad_(True)
                    field = self.schedule.derivative(t) * self.velocity(x, self.schedule(t), cond, guidance)
                    div = sum(torch.autograd.grad(field[:, i].sum(), x, retain_graph=i < 2)[0][:, i] for i in range(3))
                return torch.cat([field.detach(), div.detach()[:, None]], dim=-1)

            end = dormand_prince(rate, state, 0.0, 1.0, self.settings.atol, self.settings.rtol)
        return end[:, 3] - LOG_AREA

    def nll(self, embeddings: torch.Tensor, latitude, longitude, guidance: float = 0.0) -> torch.Tensor:
        """(N,) negative log-likelihood (nats, per steradian) of the true points under each image's embedding."""
        lat = torch.as_tensor(latitude, dtype=torch.float64)
        lon = torch.as_tensor(longitude, dtype=torch.float64)
        points = latlon_to_xyz(lat, lon).float().to(embeddings.device)
        return -self.log_density(embeddings, points, guidance)

    def likelihood_grid(
        self, embedding: torch.Tensor, resolution_deg: float = 10.0, batch_size: int = 4096, guidance: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(latitudes, longitudes, log_density)`` of one image's embedding (D,) on a lat/lon grid every
        ``resolution_deg`` degrees (``log_density[i, j]`` at ``latitudes[i], longitudes[j]``, per steradian)."""
        from tqdm.auto import tqdm

        lats = np.arange(-90.0, 90.0 + 1e-9, resolution_deg)
        lons = np.arange(-180.0, 180.0 + 1e-9, resolution_deg)
        lon_grid, lat_grid = np.meshgrid(lons, lats)
        points = latlon_to_xyz(torch.as_tensor(lat_grid.ravel()), torch.as_tensor(lon_grid.ravel())).float()
        cond = embedding.reshape(1, -1)
        out = []
        chunks = range(0, len(points), batch_size)
        for i in tqdm(chunks, desc="likelihood grid", unit="batch", disable=len(chunks) < 2):
            part = points[i : i + batch_size].to(cond.device)
            out.append(self.log_density(cond.expand(len(part), -1), part, guidance).cpu())
        return lats, lons, torch.cat(out).numpy().reshape(lat_grid.shape)

    # --- the head's outputs and answers

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        lead = embeddings.shape[:-1]
        if self.training:
            return embeddings.new_zeros((*lead, 0, 4), dtype=torch.float32)
        flat = embeddings.reshape(-1, embeddings.shape[-1])
        m = self.settings.samples
        noise = self.noise(flat, m).to(flat.device).flatten(0, 1)
        cond = flat.float().repeat_interleave(m, dim=0)
        points = self.sample(cond, noise)
        logp = torch.full((len(points),), torch.nan, device=points.device)
        if self.settings.point == "likeliest":
            logp = self.log_density(cond, points)
        out = torch.cat([points, logp[:, None]], dim=-1)
        return out.reshape(*lead, m, 4)

    def fuse(self, logits: torch.Tensor, view_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, V, M, 4) → (B, V·M, 4): the views' samples pooled, a padded view's set to NaN."""
        if view_mask is not None:
            logits = logits.masked_fill(~view_mask.bool()[:, :, None, None], torch.nan)
        return logits.flatten(1, 2)

    def fuse_augmented(self, out: torch.Tensor) -> torch.Tensor:
        return self.fuse(out)

    def head_loss(self, out, embeddings, labels, coordinates) -> torch.Tensor | None:
        """The flow-matching loss on the (per-view) ``embeddings`` (``None`` without true ``coordinates``)."""
        return None if coordinates is None else self.flow_loss(embeddings, coordinates)

    def loss(self, logits, labels, coordinates=None) -> torch.Tensor:
        raise TypeError(f"flow head {self.name!r} trains on embeddings: call flow_loss")

    def flow_loss(
        self, embeddings: torch.Tensor, coordinates: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Riemannian flow matching (see the class docstring) of ``embeddings`` (B, D) or (B, V, D) to the true
        ``coordinates`` (B, 2) in degrees; rows without coordinates (NaN) are left out."""
        if embeddings.ndim == 3:  # every view learns its place
            coordinates = coordinates[:, None].expand(-1, embeddings.shape[1], -1).reshape(-1, 2)
            embeddings = embeddings.flatten(0, 1)
        located = torch.isfinite(coordinates).all(1)
        if not located.any():
            return embeddings.float().sum() * 0.0
        cond = self.dropout(embeddings[located])
        x1 = latlon_to_xyz(coordinates[located, 0].double(), coordinates[located, 1].double()).float()
        n, device = len(x1), cond.device
        drawn_on = "cpu" if generator is not None else device  # a generator draws on its own device
        gamma = self.schedule(torch.rand(n, generator=generator, device=drawn_on).to(device))
        x0 = F.normalize(torch.randn(n, 3, generator=generator, device=drawn_on), dim=-1).to(device)
        xt, target = geodesic_point_and_velocity(x0, x1.to(device), gamma)
        if self.training and self.settings.cond_drop > 0:
            keep = (torch.rand(n, generator=generator, device=drawn_on).to(device) >= self.settings.cond_drop)[:, None]
            cond = cond * keep.to(cond.dtype)
        v = self.network(xt, gamma, cond).float()
        return (v - target).square().sum(-1).mean() / 3.0

    def _finite(self, out: torch.Tensor) -> torch.Tensor:
        return torch.isfinite(out[..., :3]).all(-1)

    def coordinates(self, logits: torch.Tensor, method: str = "weighted", top_k: int = 5, radius_km=None):
        """(B, 2) the point: the first sample, or the likeliest (``point="likeliest"``); NaN without samples."""
        out = logits.float()
        if out.shape[1] == 0:
            return out.new_full((out.shape[0], 2), torch.nan)
        finite = self._finite(out)
        if self.settings.point == "likeliest":
            score = torch.nan_to_num(out[..., 3], nan=-torch.inf).masked_fill(~finite, -torch.inf)
        else:  # the first real sample
            score = -torch.arange(out.shape[1], device=out.device, dtype=torch.float32).expand_as(out[..., 3])
            score = score.masked_fill(~finite, -torch.inf)
        best = score.argmax(1)
        xyz = out[torch.arange(len(out), device=out.device), best, :3]
        lat, lon = xyz_to_latlon(xyz)
        return torch.stack([lat, lon], -1)

    def confidence_radius(self, logits: torch.Tensor, coordinates: torch.Tensor, mass: float = 0.5) -> torch.Tensor:
        """(B,) km from ``coordinates`` within which ``mass`` of the samples lie (NaN without samples)."""
        out = logits.float()
        if out.shape[1] == 0:
            return out.new_full((out.shape[0],), torch.nan)
        lat, lon = xyz_to_latlon(out[..., :3])
        d = haversine_km(coordinates[:, None, 0].float(), coordinates[:, None, 1].float(), lat, lon)
        d = d.masked_fill(~self._finite(out), torch.inf).sort(dim=1).values
        count = self._finite(out).sum(1)
        k = (torch.ceil(mass * count.float()).long() - 1).clamp(min=0, max=out.shape[1] - 1)
        radius = d.gather(1, k[:, None])[:, 0]
        return torch.where(count > 0, radius, torch.full_like(radius, torch.nan))


def geodesic_point_and_velocity(x0: torch.Tensor, x1: torch.Tensor, gamma: torch.Tensor):
    """The point at fraction ``gamma`` of the great circle from ``x0`` to ``x1`` (unit vectors, (N, 3)) and its
    velocity d/dgamma: ``cos(g a) x0 + sin(g a) e`` and ``a (cos(g a) e - sin(g a) x0)``, ``a`` the angle between
    them and ``e`` the unit tangent at ``x0`` towards ``x1``."""
    cos = (x0 * x1).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    angle = torch.arccos(cos)
    toward = x1 - cos * x0
    e = toward / toward.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    g = gamma.reshape(-1, 1) * angle
    point = torch.cos(g) * x0 + torch.sin(g) * e
    velocity = angle * (torch.cos(g) * e - torch.sin(g) * x0)
    return point, velocity
