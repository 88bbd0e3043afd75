"""Checks that a model has a per-example NTK at all: no batch mixing, no randomness, usable outputs.

The empirical NTK T_ab(x, x') = <df_a(x)/dtheta, df_b(x')/dtheta> presumes that f(x) is a function of x alone.
BatchNorm in training mode (batch statistics) and dropout in training mode (random masks) break that, and
every fast method would silently return something else, so they are refused with a message that says what to
do.

Layers that are not obviously at fault are covered by a numerical probe on a batch of `PROBE_BATCH` examples
drawn from spread-out, distinct rows of x1 and x2 (not the first rows, which may repeat one example, where a
batch mean is that example). It compares the batched outputs with those of each example run alone (vmapped,
so the model sees a batch of one), and the parameter gradient of the batched outputs against a random
cotangent (one vjp) with the vjp of the examples run alone; the batch run twice must also give the same
outputs. The layerwise and ntk-vp methods run the model on blocks of many examples, so they
also compare, on the largest block they pass to the model, its outputs with those of `_SINGLES` of its
examples run alone (method="jacobian" only ever runs the model on one example at a time).

Detected: a dependence of an example's outputs, or of their gradients with respect to the selected parameters,
on the other examples of the probe batch, larger than sqrt(eps) of the dtype relative to the outputs' scale
(or to that parameter's gradient): batch statistics, means over the batch in the forward pass or only in the
backward pass (`h + (m - m.detach())`); a dependence of the outputs on the other examples that appears only
in batches larger than the probe's, up to the method's block size; randomness between two calls.
Not detected: gradient-only mixing that appears only in batches larger than `PROBE_BATCH`; mixing that shows
only for inputs unlike the probed rows, or only at batch sizes that are neither the probe's nor the largest
block's (e.g. only at odd sizes), or that a random cotangent happens to miss (probability zero); dependence
below the tolerance; randomness that repeats between two consecutive calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap

from ._batching import OUT_OF_MEMORY

_EVAL_HINT = "call model.eval() before computing its NTK (or remove the layer)"


def check_modes(model: nn.Module) -> None:
    """Refuse layers whose training-mode behaviour mixes the batch or is random."""
    for name, module in model.named_modules():
        label = name or type(model).__name__
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.training:
                raise ValueError(
                    f"model: {type(module).__name__} layer {label!r} is in training mode, so it normalises "
                    "with the statistics of the whole batch and the output for one example depends on the "
                    f"others; {_EVAL_HINT} (in eval mode it uses its running statistics)"
                )
            if module.running_mean is None:
                raise ValueError(
                    f"model: {type(module).__name__} layer {label!r} has track_running_stats=False, so it "
                    "uses batch statistics even in eval mode and mixes the examples of a batch; its NTK "
                    "per example is not defined. Use a per-example normalisation (LayerNorm, GroupNorm) or "
                    "track running stats"
                )
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.training and module.p > 0:
            raise ValueError(
                f"model: {type(module).__name__} layer {label!r} is in training mode and draws a random "
                f"mask at every call, so the network is not a fixed function; {_EVAL_HINT}"
            )


@contextlib.contextmanager
def _complaints_about(x: torch.Tensor, name: str) -> Iterator[None]:
    """Re-raise the model's own complaints about x as one ValueError about `name` (out of memory passes)."""
    try:
        yield
    except OUT_OF_MEMORY:  # the device is full, which says nothing about the inputs
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise ValueError(
            f"model rejected {name} (examples of shape {tuple(x.shape[1:])}, dtype {x.dtype}): "
            f"{type(err).__name__}: {err}"
        ) from err


def _forward(model: nn.Module, x: torch.Tensor, name: str) -> torch.Tensor:
    """The model's output on x, re-raising the model's own complaints as a ValueError about `name`."""
    with _complaints_about(x, name):
        out = model(x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"model must return a single tensor of shape (n, ...) for the NTK, got {type(out).__name__}; "
            "wrap it so that it returns the output you want the NTK of"
        )
    return out


PROBE_BATCH = 8
"""Examples in the probe batch that every method runs: a few forward and backward passes."""
_SINGLES = 4  # examples of a large probe batch that are also run one at a time
_MIXING_HINT = (
    "A normalisation over the batch in training mode is the usual cause: "
    f"{_EVAL_HINT}, or make the forward pass treat examples independently"
)


def spread_rows(
    x1: torch.Tensor, x2: torch.Tensor | None, count: int, *, distinct: bool = True
) -> torch.Tensor:
    """`count` examples spread evenly over x1 and x2 (read as one sequence), distinct where possible.

    Evenly spaced positions first. With `distinct`, where they repeat an example already chosen, other rows at
    fixed pseudo-random positions take their place (at most 32 * count are looked at), so repeated leading rows
    or a sorted x1 do not make the probe see one example many times; with fewer distinct rows than `count`,
    each distinct row found is used once. Without it (for large batches, where a few repeats hide nothing),
    the evenly spaced rows are taken as they are.
    """
    n1 = x1.shape[0]
    total = n1 + (0 if x2 is None else x2.shape[0])
    count = max(1, min(count, total))

    def rows(index: torch.Tensor) -> torch.Tensor:
        if x2 is None:
            return x1[index.to(x1.device)]
        both = torch.cat([x1[index[index < n1].to(x1.device)], x2[(index[index >= n1] - n1).to(x2.device)]])
        return both

    evenly = torch.linspace(0, total - 1, count, dtype=torch.float64).round().long().unique()
    if not distinct:
        return rows(evenly)
    others = torch.randint(total, (32 * count,), generator=torch.Generator().manual_seed(0))
    chosen: list[torch.Tensor] = []
    for i in dict.fromkeys(evenly.tolist() + others.tolist()):  # ordered, without repeated positions
        candidate = x1[i] if i < n1 else x2[i - n1]  # type: ignore[index]
        if not any(torch.equal(candidate, c) for c in chosen):
            chosen.append(candidate)
            if len(chosen) == count:
                break
    return torch.stack(chosen)


def _spread_positions(b: int, count: int) -> list[int]:
    return sorted(set(torch.linspace(0, b - 1, min(b, count), dtype=torch.float64).round().long().tolist()))


def _gradients(
    model: nn.Module, leaves: dict[str, torch.Tensor], x: torch.Tensor, cotangent: torch.Tensor, name: str
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """The outputs (b, k) on x and the vjp of `cotangent` (b, k) with respect to `leaves`."""
    with torch.enable_grad():
        with _complaints_about(x, name):
            out = functional_call(model, leaves, (x,))
        out = out.reshape(x.shape[0], -1).to(cotangent.dtype)
        if not leaves or not out.requires_grad:  # no selected parameter reaches the output: zero gradients
            return out.detach(), [None] * len(leaves)
        grads = torch.autograd.grad(out, list(leaves.values()), cotangent, allow_unused=True)
    return out.detach(), [None if g is None else g.detach() for g in grads]


def _differs(batched: torch.Tensor, alone: torch.Tensor) -> bool:
    """Whether outputs of the same examples run in a batch and one at a time differ beyond round-off."""
    eps = torch.finfo(batched.dtype).eps
    # float32 reductions in a batch and alone may differ in their last bits, amplified with depth;
    # sqrt(eps) leaves room for that while a real dependence on other examples is O(1) of the output.
    scale = max(float(batched.abs().max()), float(alone.abs().max()), torch.finfo(batched.dtype).tiny)
    return float((batched - alone).abs().max()) > eps**0.5 * scale


def _singles(
    model: nn.Module, leaves: dict[str, torch.Tensor], x: torch.Tensor, cotangent: torch.Tensor, name: str
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """The outputs (b, k) of x's examples each run alone, and the sum of their vjps with `cotangent` (b, k).

    vmap runs the model on one example at a time in a single pass (so one backward pass for all of them); a
    model vmap cannot batch is run example by example instead.
    """
    params = {key: p.detach() for key, p in leaves.items()}

    def batched(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return vmap(lambda xi: functional_call(model, p, (xi.unsqueeze(0),)).reshape(-1))(x)

    try:
        with torch.enable_grad():
            out, pullback = vjp(batched, params)
            grads = pullback(cotangent.to(out.dtype))[0]
        return out.detach(), [None if grads.get(key) is None else grads[key].detach() for key in leaves]
    except OUT_OF_MEMORY:
        raise
    except (RuntimeError, ValueError, NotImplementedError):
        pass
    outputs, summed = [], [None] * len(leaves)
    for i in range(x.shape[0]):
        single, grads = _gradients(model, leaves, x[i : i + 1], cotangent[i : i + 1], name)
        outputs.append(single)
        summed = [g if t is None else (t if g is None else t + g) for t, g in zip(summed, grads, strict=True)]
    return torch.cat(outputs), summed


def _mixing(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    k: int,
    name: str,
    batched_out: torch.Tensor,
) -> str | None:
    """Whether the examples of the batch x depend on each other: None when they do not, else "outputs",
    "gradients" (the forward pass is per example, the backward pass is not) or "random" (the batch's outputs
    differ from `batched_out`, an earlier pass on the same batch)."""
    leaves = {key: p.detach().requires_grad_(True) for key, p in params.items()}
    dtype = batched_out.dtype
    generator = torch.Generator().manual_seed(4321)
    cotangent = torch.randn(x.shape[0], k, generator=generator, dtype=torch.float64).to(x.device, dtype)
    out, batched = _gradients(model, leaves, x, cotangent, name)
    if _differs(out, batched_out):
        return "random"
    alone, summed = _singles(model, leaves, x, cotangent, name)
    if alone.shape != out.shape or _differs(out, alone.to(dtype)):
        return "outputs"
    eps = torch.finfo(dtype).eps
    sizes, diffs = [], []
    for gb, gs in zip(batched, summed, strict=True):
        zero = torch.zeros((), dtype=dtype, device=x.device)
        gb, gs = (zero if gb is None else gb), (zero if gs is None else gs)
        sizes.append(float(gb.norm()) + float(gs.norm()))
        diffs.append(float((gb - gs).norm()))
    floor = max([1e-3 * s for s in sizes] + [torch.finfo(dtype).tiny])
    for diff, size in zip(diffs, sizes, strict=True):
        # relative to that parameter's gradient, with a floor for gradients that are round-off themselves
        if diff > eps**0.5 * max(size, floor):
            return "gradients"
    return None


def _refuse(what: str, name: str, b: int) -> None:
    if what == "random":
        raise ValueError(
            "model gives different outputs for the same input in two calls (dropout or another random "
            f"layer in training mode?), so its NTK is not defined; {_EVAL_HINT}"
        )
    if what == "outputs":
        raise ValueError(
            f"model's output for one example depends on the other examples in the batch (on a batch of {b} "
            f"examples of {name}, the batched output differs from the examples run one at a time), so a "
            f"per-example NTK is not defined. {_MIXING_HINT}"
        )
    raise ValueError(
        f"model's gradients for one example depend on the other examples in the batch (on a batch of {b} "
        f"examples of {name}, the forward pass is per example but the parameter gradients of the batched "
        "outputs differ from those of the examples run one at a time, as with h + (m - m.detach()) for a "
        f"batch mean m), so a per-example NTK is not defined. {_MIXING_HINT}"
    )


def probe(model: nn.Module, x: torch.Tensor, name: str, params: dict[str, torch.Tensor] | None = None) -> int:
    """Run the model on the probe batch x and return its number of outputs k per example.

    Raises when the output does not have one row per example, is not floating or finite, changes between two
    identical calls (randomness), or, where the batch has several examples, when an example's outputs or
    their gradients with respect to `params` (default: every parameter with requires_grad) depend on the
    other examples in the batch (batch mixing; see the module docstring for what is and is not detected).
    """
    m = x.shape[0]
    with torch.no_grad():
        out = _forward(model, x, name)
        if out.ndim == 0 or out.shape[0] != m:
            raise ValueError(
                f"model must map a batch of n examples to an output of shape (n, ...); for {name} with {m} "
                f"example(s) of shape {tuple(x.shape)} it returned shape {tuple(out.shape)}"
            )
        if not out.is_floating_point():
            raise TypeError(f"model output must be floating point, got {out.dtype}")
        if not bool(torch.isfinite(out).all()):
            raise ValueError(
                f"model output contains NaN or infinite values for {name}; the inputs may be too large for "
                f"{out.dtype} (normalise them, or use float64), or the model itself produces them"
            )
        k = out[0].numel()
        flat = out.reshape(m, k)
    if params is None:
        params = {key: p for key, p in model.named_parameters() if p.requires_grad}
    if m == 1:
        with torch.no_grad():
            what = "random" if _differs(_forward(model, x, name).reshape(m, k), flat) else None
    else:
        what = _mixing(model, params, x, k, name, flat)
    if what is not None:
        _refuse(what, name, m)
    return k


def check_outputs(model: nn.Module, x: torch.Tensor, batched_out: torch.Tensor, name: str) -> None:
    """Refuse a model whose outputs `batched_out` (b, k) on the batch x differ from x's examples run alone.

    `_SINGLES` examples spread over the batch are run one at a time (forward passes only). The methods call
    this on the largest batch they pass to the model, where a model may mix that does not at the probe's size.
    """
    positions = _spread_positions(x.shape[0], _SINGLES)
    with torch.no_grad():
        alone = torch.cat([_forward(model, x[i : i + 1], name).reshape(1, -1) for i in positions])
    if alone.shape[1] != batched_out.shape[1] or _differs(batched_out[positions].to(alone.dtype), alone):
        _refuse("outputs", name, x.shape[0])


def check_batched(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None, batch: int) -> None:
    """Probe for batch mixing in the forward pass at `batch` examples, the largest batch of the ntk-vp method.

    A model may treat small batches per example and mix larger ones (a normalisation switched on by the batch
    size); the probe of every method uses `PROBE_BATCH` examples, so a method that runs the model on blocks of
    `batch` examples checks that size too: one batched forward pass over rows spread over x1 and x2, and
    `_SINGLES` of its examples alone. (The layerwise method instead checks the outputs of its first block,
    which it computes anyway.)
    """
    total = x1.shape[0] + (0 if x2 is None else x2.shape[0])
    if min(batch, total) <= PROBE_BATCH:
        return  # the probe of every method ran a batch at least this large
    x = spread_rows(x1, x2, batch, distinct=False)
    name = "x1" if x2 is None else "x1/x2"
    with torch.no_grad():
        out = _forward(model, x, name).reshape(x.shape[0], -1)
    check_outputs(model, x, out, name)


def functional_outputs(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The model's output on the batch x with `params` substituted, reshaped to (b, k)."""
    out = functional_call(model, params, (x,))
    return out.reshape(x.shape[0], -1)
