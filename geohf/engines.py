"""Where a command's batch work runs: in this process (``local``, the default) or on a Ray cluster (``ray``)."""

from __future__ import annotations

from types import ModuleType

from .errors import UserError

ENGINES = ("local", "ray")


def require_ray() -> ModuleType:
    """The ``ray`` module, or one line saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise UserError("--engine ray needs Ray: pip install 'geohf[ray]'") from err
    return ray


def connect_ray(address: str | None = None, num_cpus: int | None = None) -> ModuleType:
    """Join the Ray cluster at ``address`` (``auto``, ``ray://head:10001``; ``$RAY_ADDRESS`` when None), or start
    a local one without a dashboard; a Ray already started in this process is reused as it is."""
    ray = require_ray()
    if not ray.is_initialized():
        try:
            ray.init(
                address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                log_to_driver=False,
            )  # fmt: skip
        except ConnectionError as err:
            raise UserError(
                f"--address {address}: no Ray cluster answers there ({err}); start one with `ray start --head`"
            ) from err
    return ray
