"""A user's own model: any ``torch.nn.Module`` from a factory named in the config.

``model.factory: "package.module:callable"`` is imported and called with
``model.kwargs`` under torch's generator seeded from (run seed, Stream.INIT), so
the driver and every worker build the same initial bits. Its parameters become
the flat vector like the built-in models' (``bind_flat``: every parameter a view
into one flat tensor, tied parameters one entry), its floating-point buffers
(batch-norm running statistics) a second flat vector of their own (``bind_flat``
too), which the run treats by ``model.buffers``.

Importing the factory runs the user's code: the trust boundary is the run's start
(``fedsim validate`` without ``--data`` never gets here).
"""

from __future__ import annotations

import copy
import os

import numpy as np
import torch
from torch import nn

from clients.errors import ModelError
from clients.models.layout import Layout
from clients.models.spec import MODULE_MODEL, LayerSpec, ModelSpec, ModuleSource
from clients.streams import Stream
from clients.user_code import resolve

KEY = "model.factory"


def init_seed(seed: int) -> int:
    """The torch seed a module model is built under: from (seed, Stream.INIT)."""
    return int(np.random.SeedSequence([seed, Stream.INIT]).generate_state(1, np.uint64)[0] >> 1)


def build_module(source: ModuleSource) -> nn.Module:
    """``factory(**kwargs)`` under torch's CPU generator seeded by ``init_seed``; the
    caller's generator state is left as it was."""
    factory = resolve(source.factory, KEY, source.search_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed(source.seed))
        try:
            net = factory(**source.kwargs)
        except Exception as exc:
            raise ModelError(
                f"{KEY}: {source.factory}(**model.kwargs) raised {type(exc).__name__}: {exc}"
            ) from exc
    if not isinstance(net, nn.Module):
        raise ModelError(f"{KEY}: {source.factory} returned a {type(net).__name__}, not a torch.nn.Module")
    return net


def module_spec(
    factory: str,
    kwargs: dict,
    seed: int,
    input_shape: tuple[int, ...],
    num_classes: int,
    input_dtype: str = "float32",
) -> ModelSpec:
    """The spec of a user's module model: one ``module`` layer per top-level unit."""
    net = build_module(ModuleSource(factory, dict(kwargs), seed, search_path=os.getcwd()))
    # Workers import the factory from their own path, where runtime.py_modules ships it:
    # the driver's folders need not exist on their node.
    source = ModuleSource(factory, dict(kwargs), seed)
    layers = module_layers(net)
    if not any(layer.args["params"] for layer in layers):
        raise ModelError(f"{KEY}: {factory}'s model has no parameters; nothing could be trained")
    return ModelSpec(MODULE_MODEL, tuple(input_shape), num_classes, layers, input_dtype, source)


def module_layers(net: nn.Module) -> tuple[LayerSpec, ...]:
    """One ``module`` LayerSpec per top-level unit (a child module, or a parameter or buffer
    of the root), in torch's parameter order: their params, float buffers, batch norms."""
    norms = {n: m for n, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    norm_params = {f"{n}.{p}".lstrip(".") for n, m in norms.items() for p, _ in m.named_parameters()}
    units: dict[str, dict] = {}
    for name, p in net.named_parameters():
        _unit(units, name)["params"].append((name, tuple(p.shape)))
    for name, b in net.named_buffers():
        if b.is_floating_point():
            _unit(units, name)["buffers"].append((name, tuple(b.shape)))
    layers = []
    for unit, found in units.items():
        args = {
            "params": tuple(found["params"]),
            "buffers": tuple(found["buffers"]),
            "batchnorm": any(n == unit or n.startswith(unit + ".") for n in norms),
            "norm_params": tuple(n for n, _ in found["params"] if n in norm_params),
        }
        layers.append(LayerSpec(MODULE_MODEL, unit, args))
    return tuple(layers)


def _unit(units: dict[str, dict], name: str) -> dict:
    return units.setdefault(name.split(".", 1)[0], {"params": [], "buffers": []})


def bind_flat(net: nn.Module, layout: Layout, flat: torch.Tensor, grad: torch.Tensor | None, buffers: bool):
    """Make every parameter (``buffers``: every float buffer) of ``net`` a view into ``flat``
    (n,), holding its current values, and each parameter's ``.grad`` a view into ``grad``.
    A tensor registered under several names (tied weights) is one entry, the first name's."""
    named = list(
        net.named_buffers(remove_duplicate=False) if buffers else net.named_parameters(remove_duplicate=False)
    )
    named = [(n, t) for n, t in named if not buffers or t.is_floating_point()]
    first: dict[int, str] = {}
    for name, tensor in named:
        first.setdefault(id(tensor), name)
    if list(first.values()) != [slot.name for slot in layout]:
        raise ModelError(
            f"{KEY}: the model built here has other tensors than the run's spec: {list(first.values())[:5]}"
        )
    views: dict[int, torch.Tensor] = {}
    for name, tensor in named:
        if id(tensor) not in views:
            slot = layout[first[id(tensor)]]
            flat[slot.offset : slot.stop].copy_(tensor.detach().reshape(-1))
            view = flat[slot.offset : slot.stop].view(slot.shape)
            if not buffers:
                assert grad is not None, "parameters are bound with their gradient vector"
                view = nn.Parameter(view, requires_grad=tensor.requires_grad)
                view.grad = grad[slot.offset : slot.stop].view(slot.shape)
            views[id(tensor)] = view
        owner, _, attr = name.rpartition(".")
        setattr(net.get_submodule(owner) if owner else net, attr, views[id(tensor)])


@torch.no_grad()
def check_fits(
    net: nn.Module,
    x: torch.Tensor,
    num_classes: int,
    factory: str,
    targets: tuple[int, ...] | None = None,
    positions: int | None = None,
) -> torch.Tensor:
    """Refuse a model whose output for a batch ``x`` (B, *input_shape) is not logits
    (B, num_classes) (with labels at ``positions`` T per row: (B, T, num_classes)), or,
    for regression ``targets`` (the shape of one row's targets: () or (k,)), not (B, k)
    (or (B,) / (B, 1) for () targets); a copy in evaluation mode runs it, so ``net`` is
    left as it was. Returns that output."""
    probe = copy.deepcopy(net).eval()
    shape = tuple(x.shape)
    try:
        out = probe(x)
    except Exception as exc:
        raise ModelError(
            f"{KEY}: {factory}'s model cannot take the data's inputs {shape}: {type(exc).__name__}: {exc}"
        ) from exc
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    fits: list[tuple[int, ...]]
    if targets is None:
        fits = [(len(x), num_classes) if positions is None else (len(x), positions, num_classes)]
        need = f"the labels need float logits {fits[0]} (the data has {num_classes} classes)"
    else:
        fits = [(len(x), *targets)] + ([(len(x), 1)] if targets == () else [])
        need = f"the regression targets need float outputs {' or '.join(map(str, fits))}"
    if not isinstance(out, torch.Tensor) or got not in fits or not out.is_floating_point():
        raise ModelError(f"{KEY}: {factory}'s model maps inputs {shape} to {got}; {need}")
    return out
