"""A model's inference forward as a traced TorchScript graph, which runs without Python's GIL.

On a CPU ``geohf predict`` and ``GeoPredictor.iter_dataset`` run two batches at once (:mod:`.engine`): one
batch's Python (decoding, answers, records) beside the other's forward; the pipeline's forward runs it too.
An eager forward takes the GIL back after every operator, so it waits whenever the other stream runs Python
(the demo model's forward beside a busy Python thread: 13x slower eager, 7% slower traced). A traced graph runs
all its operators in TorchScript's interpreter with the GIL released, and skips Python's cost per operator (the demo
model's forward at 96 px runs 13–17% faster). Measured in ``benchmarks/throughput.py`` (docs/benchmarks.md).

* **When.** After :data:`EAGER_BATCHES` eager batches of one kind of input (shape but batch size,
  dtype, layout, autocast, outputs asked for): a run of up to 512 images in batches of 32 never pays
  the trace, and a longer one pays about 0.12 s once, even by 1,000 images.
* **Same numbers.** The graph runs exactly as traced (no profiling executor, no fusion: the eager
  forward's kernels), and serves a batch size only after its outputs equal the eager forward's bit for
  bit on a batch of that size. A trace that fails, warns that it may not generalise (a branch on a
  tensor: transformers' towers and timm's ViTs check their input's shape that way), or disagrees leaves
  that kind of input on the eager forward.
* **Same model.** The graph shares the model's tensors (in-place updates reach it) and is dropped when
  :func:`model_state` changes: any parameter or buffer replaced (``load_state_dict(..., assign=True)``, a
  swapped submodule, a dtype or device change), any module's train / eval mode, or the config's primary
  head and coordinate rule (read per batch, or once per call by the pipeline). Nothing of it lives in the
  model. A model with a head that keeps Python state of its own (:data:`EAGER_ONLY`: GeoCLIP's gallery
  cache) runs eagerly.

``torch.jit.trace`` is deprecated in torch 2.x; where it fails or is gone, the eager forward runs.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as pytree

EAGER_BATCHES = 16
"""Eager forwards of one kind of input before its graph is traced."""

EAGER_ONLY = frozenset({"GeoClipHead", "FlowHead"})
"""Module classes whose forward reads Python state a trace would freeze (GeoCLIP's head checks its gallery
cache against the location encoder's weights; a flow head seeds its noise from the embeddings' bytes and
integrates its likelihood ODE with adaptive steps): a model holding one always runs eagerly."""


def model_state(model: torch.nn.Module) -> tuple | None:
    """Everything the inference forward reads besides the values of its tensors: which modules, which tensors
    (each module's parameters and buffers by name, object, storage, dtype, device and shape), each module's
    train / eval mode, and the config's primary head and coordinate rule. A traced graph holds while this is unchanged;
    ``None`` for a model that must run eagerly (:data:`EAGER_ONLY`)."""
    # one walk over the modules reading their own tensors (``named_parameters()`` walks them again per call,
    # and builds every dotted name: twice the cost, paid on every batch)
    modules, tensors = [], []
    for m in model.modules():
        if type(m).__name__ in EAGER_ONLY:
            return None
        modules.append((id(m), m.training))
        for own in (m._parameters, m._buffers):
            tensors += [(k, id(t), t.data_ptr(), t.dtype, t.device, t.shape) for k, t in own.items() if t is not None]
    config = getattr(model, "config", None)
    rule = tuple(
        getattr(config, key, None)
        for key in ("primary_head", "coordinate_method", "coordinate_top_k", "coordinate_radius_km")
    )
    return tuple(tensors), tuple(modules), rule


@dataclass
class _Graph:
    """One kind of input's graph: traced after :data:`EAGER_BATCHES` eager calls, checked per batch size."""

    calls: int = 0
    module: Any = None  # the traced graph (a torch.jit.ScriptFunction)
    spec: Any = None  # how its flat tensor outputs nest into the model's output
    checked: set[int] = field(default_factory=set)  # batch sizes whose outputs equalled the eager forward's
    failed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → (inference state, {kind: _Graph})
_GRAPHS_LOCK = threading.Lock()


def _graph(model: torch.nn.Module, state: tuple, kind: tuple) -> _Graph:
    with _GRAPHS_LOCK:
        held = _GRAPHS.get(model)
        if held is None or held[0] != state:  # the model changed: its graphs are gone
            held = _GRAPHS[model] = (state, {})
        return held[1].setdefault(kind, _Graph())


def _trace(model: torch.nn.Module, pixel_values: torch.Tensor, kwargs: dict[str, Any], graph: _Graph) -> list | None:
    """Trace the forward as a function of the pixels; the outputs of the tracing run (the eager forward's),
    flat, or ``None`` where it failed. The model's tensors enter the graph as constants, the tensors
    themselves (so in-place updates reach it), and none of its ~280 modules becomes a ScriptModule (which
    took two thirds of tracing it as a module: 0.36 s against 0.12 s)."""
    model_ref = weakref.ref(model)  # the graph keeps the function: it must not keep the model alive
    ran: list = []

    def flat(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        leaves, spec = pytree.tree_flatten(model_ref()(pixel_values=x, **kwargs))
        if not all(isinstance(t, torch.Tensor) for t in leaves):
            raise TypeError("the model's output holds more than tensors")
        ran[:] = [leaves, spec]
        return tuple(leaves)

    needing_grad = [t for t in (*model.parameters(), *model.buffers()) if t.requires_grad]
    try:
        for t in needing_grad:  # a constant may not require grad
            t.requires_grad_(False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecation notices of torch.jit and of what the model calls
            warnings.simplefilter("error", torch.jit.TracerWarning)  # a trace that may not generalise
            with torch.inference_mode():  # (under no_grad alone autocast's cached weight casts cannot be traced)
                module = torch.jit.trace(flat, (pixel_values,), check_trace=False)
    except Exception:  # anything the tracer cannot follow: the eager forward stays
        graph.failed = True
        return None
    finally:
        for t in needing_grad:
            t.requires_grad_(True)
    graph.spec, graph.module = ran[1], module  # the spec first: another stream may take the graph now
    return ran[0]


def _check(graph: _Graph, pixel_values: torch.Tensor, expected: list) -> None:
    """Serve this batch size from the graph if its outputs equal ``expected`` (the eager forward's, flat),
    bit for bit; else never again."""
    try:
        leaves = _run(graph, pixel_values)
    except Exception:  # a size the trace recorded as a constant
        leaves = ()
    if len(expected) == len(leaves) and all(torch.equal(a, b) for a, b in zip(expected, leaves)):
        graph.checked.add(pixel_values.shape[0])
    else:
        graph.failed = True


def _run(graph: _Graph, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    # as traced (its autocast casts are recorded in it): the eager forward's kernels
    with torch.jit.optimized_execution(False), torch.autocast(pixel_values.device.type, enabled=False):
        return graph.module(pixel_values)


def graph_forward(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    eager: Callable[[torch.Tensor], Any],
    state: tuple | None = None,
    **kwargs,
):
    """``eager(pixel_values)`` (the model's forward with ``kwargs``, under the caller's autocast), from the
    model's traced graph where one is in place and checked for this batch size (module docstring).
    ``state``: the model's :func:`model_state` taken once by a caller running many batches of a model that
    does not change meanwhile (a pipeline call); ``None``: taken here, for this batch."""
    state = model_state(model) if state is None else state
    if state is None:
        return eager(pixel_values)
    device = pixel_values.device.type
    kind = (
        tuple(pixel_values.shape[1:]),
        pixel_values.dtype,
        pixel_values.is_contiguous(memory_format=torch.channels_last),
        torch.is_autocast_enabled(device),
        torch.get_autocast_dtype(device),
        tuple(sorted(kwargs.items())),
        model.dtype,
        model.device,
    )
    graph = _graph(model, state, kind)
    if graph.failed:
        return eager(pixel_values)
    if graph.module is None:
        graph.calls += 1
        if graph.calls <= EAGER_BATCHES or not graph.lock.acquire(blocking=False):
            return eager(pixel_values)  # (or another stream is tracing it meanwhile)
        try:
            traced = _trace(model, pixel_values, kwargs, graph) if graph.module is None and not graph.failed else None
        finally:
            graph.lock.release()
        if traced is None:
            return eager(pixel_values)
        _check(graph, pixel_values, traced)
        return pytree.tree_unflatten(traced, graph.spec)
    if pixel_values.shape[0] in graph.checked:
        return pytree.tree_unflatten(list(_run(graph, pixel_values)), graph.spec)
    out = eager(pixel_values)
    _check(graph, pixel_values, pytree.tree_leaves(out))
    return out
