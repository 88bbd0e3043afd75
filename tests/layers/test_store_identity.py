"""The kernel store's identity: a stored kernel is reused only by the same computation, never by another.

`arch.kernel(x, store=DIR)` keys DIR by a content fingerprint of the architecture and the inputs (and records
what it holds: names, shape, dtype, blocks). Two computations that differ in anything that changes the kernel
must not share DIR: the second is refused with a StoreError naming DIR, and in a directory of its own it gets
its own kernel, which differs from the first (so a shared entry would have been a wrong answer, not a
harmless one). The same computation, described by new but equal objects, reuses DIR without computing a block.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from ntkit import tiling
from ntkit.layers import (
    AvgPool,
    Conv,
    Dense,
    Elementwise,
    Erf,
    Flatten,
    GlobalAvgPool,
    LayerNorm,
    ReLU,
    Residual,
    Serial,
    Tanh,
)
from ntkit.layers import kernel as layer_kernel

F64 = torch.float64


def _features(n=6, d=3, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _images(n=4, seed=0):
    return torch.randn(n, 2, 5, 5, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _sine(k):
    return Elementwise(lambda s: torch.sin(k * s))


def _scaled_sin(s, scale):
    return torch.sin(scale * s)


# (name, first architecture, second architecture): each pair differs in one thing only
VARIANTS = [
    ("w_std", Serial(Dense(4, w_std=1.0), ReLU(), Dense(1)), Serial(Dense(4, w_std=1.3), ReLU(), Dense(1))),
    ("b_std", Serial(Dense(4, b_std=0.1), ReLU(), Dense(1)), Serial(Dense(4, b_std=0.2), ReLU(), Dense(1))),
    (
        "w_std-last-bit",
        Serial(Dense(4, w_std=1.0), ReLU(), Dense(1)),
        Serial(Dense(4, w_std=1.0 + 2**-40), ReLU(), Dense(1)),
    ),
    (
        "parametrization",
        Serial(Dense(4, b_std=0.1), ReLU(), Dense(1, b_std=0.1)),
        Serial(
            Dense(4, b_std=0.1, parametrization="standard"),
            ReLU(),
            Dense(1, b_std=0.1, parametrization="standard"),
        ),
    ),
    ("trainable", Serial(Dense(4), ReLU(), Dense(1)), Serial(Dense(4, trainable=False), ReLU(), Dense(1))),
    (
        "order",
        Serial(Dense(4), ReLU(), Dense(4), Erf(), Dense(1)),
        Serial(Dense(4), Erf(), Dense(4), ReLU(), Dense(1)),
    ),
    ("depth", Serial(Dense(4), ReLU(), Dense(1)), Serial(Dense(4), ReLU(), Dense(4), ReLU(), Dense(1))),
    ("activation", Serial(Dense(4), ReLU(), Dense(1)), Serial(Dense(4), Erf(), Dense(1))),
    ("quadrature-order", Serial(Dense(4), Tanh(), Dense(1)), Serial(Dense(4), Tanh(order=160), Dense(1))),
    (
        "quadrature-tolerance",
        Serial(Dense(4), Tanh(), Dense(1)),
        Serial(Dense(4), Tanh(tolerance=1e-3), Dense(1)),
    ),
    (
        "elementwise-fn",
        Serial(Dense(4), Elementwise(lambda s: torch.sin(s)), Dense(1)),
        Serial(Dense(4), Elementwise(lambda s: torch.cos(s)), Dense(1)),
    ),
    ("elementwise-closure", Serial(Dense(4), _sine(1.0), Dense(1)), Serial(Dense(4), _sine(2.0), Dense(1))),
    (
        "elementwise-partial",
        Serial(Dense(4), Elementwise(functools.partial(_scaled_sin, scale=1.0)), Dense(1)),
        Serial(Dense(4), Elementwise(functools.partial(_scaled_sin, scale=1.5)), Dense(1)),
    ),
    (
        "elementwise-derivative",
        Serial(Dense(4), Elementwise(torch.sin, torch.cos), Dense(1)),
        Serial(Dense(4), Elementwise(torch.sin, lambda s: 0.5 * torch.cos(s)), Dense(1)),
    ),
    (
        "padding",
        Serial(Conv(3, 3, padding="same"), ReLU(), Flatten(), Dense(1)),
        Serial(Conv(3, 3, padding="circular"), ReLU(), Flatten(), Dense(1)),
    ),
    (
        "stride",
        Serial(Conv(3, 3, stride=1), ReLU(), GlobalAvgPool(), Dense(1)),
        Serial(Conv(3, 3, stride=2), ReLU(), GlobalAvgPool(), Dense(1)),
    ),
    (
        "kernel_size",
        Serial(Conv(3, (3, 3)), ReLU(), GlobalAvgPool(), Dense(1)),
        Serial(Conv(3, (3, 1)), ReLU(), GlobalAvgPool(), Dense(1)),
    ),
    (
        "pooling",
        Serial(Conv(3, 3), ReLU(), AvgPool(2), Flatten(), Dense(1)),
        Serial(Conv(3, 3), ReLU(), AvgPool(2, stride=1), Flatten(), Dense(1)),
    ),
    (
        "readout",
        Serial(Conv(3, 3), ReLU(), Flatten(), Dense(1)),
        Serial(Conv(3, 3), ReLU(), GlobalAvgPool(), Dense(1)),
    ),
    (
        "layernorm-eps",
        Serial(Conv(3, 3), LayerNorm(eps=1e-6), ReLU(), GlobalAvgPool(), Dense(1)),
        Serial(Conv(3, 3), LayerNorm(eps=0.5), ReLU(), GlobalAvgPool(), Dense(1)),
    ),
    (
        "residual",
        Serial(Conv(3, 3), Residual(ReLU(), Conv(3, 3)), ReLU(), GlobalAvgPool(), Dense(1)),
        Serial(Conv(3, 3), Serial(ReLU(), Conv(3, 3)), ReLU(), GlobalAvgPool(), Dense(1)),
    ),
]


# The kernel happens to be the same at these inputs (LayerNorm's eps enters the finite module only; the adaptive
# rule meets both tolerances with the same nodes here), yet the store does not mix the two descriptions.
SAME_KERNEL = {"quadrature-tolerance", "layernorm-eps"}


def _inputs_for(arch):
    return _images() if isinstance(arch.layers[0], Conv) else _features()


@pytest.mark.parametrize(("name", "first", "second"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_architectures_that_differ_in_one_thing_never_share_a_stored_kernel(tmp_path, name, first, second):
    x = _inputs_for(first)
    stored = first.kernel(x, store=tmp_path / "k")
    with pytest.raises(tiling.StoreError, match=r"store=.*holds a different computation"):
        second.kernel(x, store=tmp_path / "k")
    own = second.kernel(x, store=tmp_path / "other")
    expected = second.kernel(x)
    assert torch.equal(own.ntk, expected.ntk) and torch.equal(own.nngp, expected.nngp)
    # the two kernels differ, so a shared store entry would have returned the wrong one
    assert torch.equal(stored.ntk, expected.ntk) == (name in SAME_KERNEL)
    assert first.fingerprint() != second.fingerprint()


def _count_tiles(monkeypatch):
    calls = []
    tile = layer_kernel._tile

    def counting(*args, **kwargs):
        calls.append(1)
        return tile(*args, **kwargs)

    monkeypatch.setattr(layer_kernel, "_tile", counting)
    return calls


@pytest.mark.parametrize(
    "make",
    [
        lambda: Serial(Dense(4, w_std=1.3, b_std=0.1), ReLU(), Dense(1)),
        lambda: Serial(Dense(4), _sine(2.0), Dense(1)),
        lambda: Serial(Dense(4), Elementwise(functools.partial(_scaled_sin, scale=1.5)), Dense(1)),
        lambda: Serial(Conv(3, 3, stride=2, padding="circular"), ReLU(), GlobalAvgPool(), Dense(1)),
    ],
    ids=["dense", "closure", "partial", "conv"],
)
def test_the_same_computation_reuses_the_store_without_computing_a_block(tmp_path, monkeypatch, make):
    first = make()
    x = _inputs_for(first)
    stored = first.kernel(x, store=tmp_path / "k")
    calls = _count_tiles(monkeypatch)
    again = make().kernel(x.clone(), store=tmp_path / "k")  # new, equal objects and a copy of the inputs
    assert calls == []
    assert torch.equal(again.ntk, stored.ntk) and torch.equal(again.nngp, stored.nngp)
    assert torch.equal(again.ntk, first.kernel(x).ntk)


def test_inputs_that_differ_in_one_value_or_in_x2_never_share_a_stored_kernel(tmp_path):
    arch = Serial(Dense(4, b_std=0.1), ReLU(), Dense(1))
    x = _features()
    arch.kernel(x, store=tmp_path / "k")
    nudged = x.clone()
    nudged[3, 1] = torch.nextafter(nudged[3, 1], torch.tensor(float("inf"), dtype=F64))  # one ulp
    for other in (nudged, torch.cat([x[:-1], x[:1]])):
        with pytest.raises(tiling.StoreError, match="different computation"):
            arch.kernel(other, store=tmp_path / "k")
    # K(x, x') with x' == x is the same matrix by another route, but the store tells the two calls apart
    with pytest.raises(tiling.StoreError, match="different computation"):
        arch.kernel(x, x.clone(), store=tmp_path / "k")
    cross = arch.kernel(x[:4], x[2:], store=tmp_path / "cross")
    with pytest.raises(tiling.StoreError, match="different computation"):
        arch.kernel(x[2:], x[:4], store=tmp_path / "cross")  # the transposed problem
    assert torch.equal(cross.ntk, arch.kernel(x[:4], x[2:]).ntk)


def test_dtype_and_requested_matrices_are_part_of_the_stored_problem(tmp_path):
    arch = Serial(Dense(4, b_std=0.1), ReLU(), Dense(1))
    x = _features()
    both = arch.kernel(x, store=tmp_path / "k")
    with pytest.raises(tiling.StoreError, match="different computation"):
        arch.kernel(x.float(), store=tmp_path / "k")
    for get in ("nngp", "ntk"):
        with pytest.raises(tiling.StoreError, match="different computation"):
            arch.kernel(x, get=get, store=tmp_path / "k")
    # each in its own directory: the requested matrix only, equal to the one computed with both
    only = {get: arch.kernel(x, get=get, store=tmp_path / get) for get in ("nngp", "ntk")}
    assert only["nngp"].ntk is None and only["ntk"].nngp is None
    assert torch.equal(only["nngp"].nngp, both.nngp) and torch.equal(only["ntk"].ntk, both.ntk)
    assert sorted(p.name for p in (tmp_path / "ntk").glob("*.npy")) == [
        "checksums.npy",
        "done.npy",
        "ntk.npy",
    ]
    single = arch.kernel(x.float(), store=tmp_path / "f32")
    assert single.ntk.dtype == torch.float32


_GAIN = [1.0]
_TABLE = {"gain": 1.0}


def test_a_function_reading_a_changed_global_container_is_not_served_the_old_kernel(tmp_path):
    """A global list or dict the function reads is part of what it computes, like a closure's contents."""
    arch = Serial(Dense(4), Elementwise(lambda s: torch.sin(_GAIN[0] * s)), Dense(1))
    by_table = Serial(Dense(4), Elementwise(lambda s: torch.sin(_TABLE["gain"] * s)), Dense(1))
    x = _features()
    try:
        for model, change in (
            (arch, lambda: _GAIN.__setitem__(0, 2.0)),
            (by_table, lambda: _TABLE.update(gain=2.0)),
        ):
            before = model.fingerprint()
            model.kernel(x, store=tmp_path / str(id(model)))
            change()
            assert model.fingerprint() != before
            with pytest.raises(tiling.StoreError, match="different computation"):
                model.kernel(x, store=tmp_path / str(id(model)))
    finally:
        _GAIN[0] = 1.0
        _TABLE["gain"] = 1.0


_ARRAY_GAIN = np.array([1.5])


class _Settings:
    gain = 1.5


_SETTINGS = _Settings()


def test_a_global_array_is_identified_by_content_and_an_unknown_global_object_is_refused(tmp_path):
    global _ARRAY_GAIN
    x = _features()
    arch = Serial(Dense(4), Elementwise(lambda s: torch.sin(float(_ARRAY_GAIN[0]) * s)), Dense(1))
    arch.kernel(x, store=tmp_path / "array")
    try:
        _ARRAY_GAIN = np.array([2.5])
        with pytest.raises(tiling.StoreError, match="different computation"):
            arch.kernel(x, store=tmp_path / "array")
    finally:
        _ARRAY_GAIN = np.array([1.5])
    # an object whose contents the fingerprint cannot see: refused for the store, fine without it
    unknown = Serial(Dense(4), Elementwise(lambda s: torch.sin(_SETTINGS.gain * s)), Dense(1))
    with pytest.raises(ValueError, match=r"cannot fingerprint _Settings.*store=None"):
        unknown.kernel(x, store=tmp_path / "opaque")
    assert not (tmp_path / "opaque").exists()
    torch.testing.assert_close(unknown.kernel(x).ntk, arch.kernel(x).ntk, rtol=1e-12, atol=0)
