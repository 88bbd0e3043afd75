"""Spatial kernels against a brute-force reference: the full-covariance recursion with plain loops, to 1e-12.

The reference follows the formulas of DESIGN.md literally, entry by entry, with none of the library's machinery
(no tiles, no separable window sums, no positions-first layout, no tape): for each pair of examples it carries
the cross-covariance S12[p, q], both self-covariances S11[p, p'], S22[q, q'] and the NTK T12[p, q] over every
pair of positions, as Python floats.
"""

from __future__ import annotations

import itertools
import math
import shutil

import numpy as np
import pytest
import torch

from ntkit.layers import (
    AbsLinear,
    AvgPool,
    Conv,
    Dense,
    Erf,
    FanInConcat,
    FanInSum,
    FanOut,
    Flatten,
    GlobalAvgPool,
    LayerNorm,
    Parallel,
    ReLU,
    Residual,
    Serial,
)


# ------------------------------------------------------------------------------------------------------------
# The reference: a state is (s11, s12, s22, t12, spatial), each a dict from position pairs to floats.
# ------------------------------------------------------------------------------------------------------------
def _positions(spatial):
    return list(itertools.product(*(range(n) for n in spatial)))


def ref_input(xa, xb):
    c = xa.shape[0]
    spatial = xa.shape[1:]
    pos = _positions(spatial)

    def gram(u, v):
        return {(p, q): sum(u[(k, *p)] * v[(k, *q)] for k in range(c)) / c for p in pos for q in pos}

    return {
        "s11": gram(xa, xa),
        "s12": gram(xa, xb),
        "s22": gram(xb, xb),
        "t12": None,
        "spatial": spatial,
        "c": c,
    }


def _pad_geometry(length, k, s, padding):
    if padding == "valid":
        return 0, (length - k) // s + 1
    out = -(-length // s)
    total = max((out - 1) * s + k - length, 0)
    return total // 2, out


def _source(q, d, s, lo, length, padding):
    """The input index of output q and tap d, or None in the zero padding."""
    i = s * q + d - lo
    if padding == "circular":
        return i % length
    return i if 0 <= i < length else None


def ref_conv(state, channels, k, s, padding, w_std, b_std, parametrization="ntk"):
    spatial = state["spatial"]
    geo = [_pad_geometry(n, kk, ss, padding) for n, kk, ss in zip(spatial, k, s, strict=True)]
    out_spatial = tuple(g[1] for g in geo)
    taps = list(itertools.product(*(range(kk) for kk in k)))

    def window(m, p, q):
        total = 0.0
        for d in taps:
            ip = [_source(p[i], d[i], s[i], geo[i][0], spatial[i], padding) for i in range(len(spatial))]
            iq = [_source(q[i], d[i], s[i], geo[i][0], spatial[i], padding) for i in range(len(spatial))]
            if None not in ip and None not in iq:
                total += m[(tuple(ip), tuple(iq))]
        return total

    pos = _positions(out_spatial)
    new = {"spatial": out_spatial, "c": channels}
    for name in ("s11", "s12", "s22"):
        new[name] = {
            (p, q): w_std**2 * window(state[name], p, q) / len(taps) + b_std**2 for p in pos for q in pos
        }
    t = state["t12"]
    t_part = {(p, q): 0.0 if t is None else w_std**2 * window(t, p, q) / len(taps) for p in pos for q in pos}
    if parametrization == "ntk":
        new["t12"] = {key: t_part[key] + new["s12"][key] for key in t_part}
    else:
        new["t12"] = {
            (p, q): t_part[(p, q)] + state["c"] * window(state["s12"], p, q) + 1.0 for p in pos for q in pos
        }
    return new


def _relu_like(a, b, s11, s22, s12, identical):
    theta = 0.0 if identical else math.acos(max(-1.0, min(1.0, s12 / math.sqrt(s11 * s22))))
    c = 2 * b * b / math.pi
    norms = math.sqrt(s11 * s22)
    dot = a * a + b * b - 2 * b * b * theta / math.pi
    value = c * norms * math.sin(theta) + dot * s12
    return value, dot


def _erf(s11, s22, s12, identical):
    q = (1 + 2 * s11) * (1 + 2 * s22)
    value = (2 / math.pi) * math.asin(2 * s12 / math.sqrt(q))
    dot = (4 / math.pi) / math.sqrt(q - 4 * s12 * s12)
    return value, dot


def ref_activation(state, kind, same):
    """`same`: the two examples are one (identical inputs: theta = 0 where p = q)."""
    pos = _positions(state["spatial"])
    fn = (lambda *args: _relu_like(*kind[1:], *args)) if kind[0] == "abslinear" else _erf
    new = {"spatial": state["spatial"], "c": state["c"]}
    for name, left, right, twin in (("s11", "s11", "s11", True), ("s22", "s22", "s22", True)):
        new[name] = {
            (p, q): fn(state[left][(p, p)], state[right][(q, q)], state[name][(p, q)], twin and p == q)[0]
            for p in pos
            for q in pos
        }
    s12, t12 = {}, {}
    for p in pos:
        for q in pos:
            value, dot = fn(state["s11"][(p, p)], state["s22"][(q, q)], state["s12"][(p, q)], same and p == q)
            s12[(p, q)] = value
            t12[(p, q)] = (state["t12"] or {}).get((p, q), 0.0) * dot
    new["s12"], new["t12"] = s12, t12
    return new


def ref_avgpool(state, k, s):
    spatial = state["spatial"]
    out = tuple((n - kk) // ss + 1 for n, kk, ss in zip(spatial, k, s, strict=True))
    taps = list(itertools.product(*(range(kk) for kk in k)))
    pos = _positions(out)

    def pooled(m):
        return {
            (p, q): sum(
                m[
                    (
                        tuple(s[i] * p[i] + d[i] for i in range(len(p))),
                        tuple(s[i] * q[i] + e[i] for i in range(len(q))),
                    )
                ]
                for d in taps
                for e in taps
            )
            / len(taps) ** 2
            for p in pos
            for q in pos
        }

    return {
        "spatial": out,
        "c": state["c"],
        **{name: pooled(state[name]) for name in ("s11", "s12", "s22", "t12")},
    }


def ref_layernorm(state):
    pos = _positions(state["spatial"])
    new = {"spatial": state["spatial"], "c": state["c"]}
    for name, left, right in (
        ("s11", "s11", "s11"),
        ("s12", "s11", "s22"),
        ("s22", "s22", "s22"),
        ("t12", "s11", "s22"),
    ):
        new[name] = {
            (p, q): state[name][(p, q)] / math.sqrt(state[left][(p, p)] * state[right][(q, q)])
            for p in pos
            for q in pos
        }
    return new


def ref_readout(state, kind):
    """GAP or Flatten, then the features' (s11, s12, s22, t12) as floats."""
    pos = _positions(state["spatial"])
    if kind == "gap":
        return {name: sum(state[name].values()) / len(state[name]) for name in ("s11", "s12", "s22", "t12")}
    return {name: sum(state[name][(p, p)] for p in pos) / len(pos) for name in ("s11", "s12", "s22", "t12")}


def ref_dense(f, w_std, b_std, n_in=None, parametrization="ntk"):
    new = {name: w_std**2 * f[name] + b_std**2 for name in ("s11", "s12", "s22")}
    if parametrization == "ntk":
        new["t12"] = w_std**2 * f["t12"] + new["s12"]
    else:
        new["t12"] = w_std**2 * f["t12"] + n_in * f["s12"] + 1.0
    return new


def ref_sum(a, b, wa=1.0, wb=1.0):
    out = {"spatial": a["spatial"], "c": a["c"] + b["c"]}
    for name in ("s11", "s12", "s22", "t12"):
        out[name] = {key: wa * a[name][key] + wb * b[name][key] for key in a[name]}
    return out


def _to_numpy(x):
    return x.detach().numpy().astype(np.float64)


# ------------------------------------------------------------------------------------------------------------
# The cases: an ntkit architecture and the same network through the reference, for one pair of examples.
# ------------------------------------------------------------------------------------------------------------
def case_gap_2d():
    arch = Serial(
        Conv(3, (3, 2), stride=(2, 1), padding="same", w_std=1.3, b_std=0.2),
        ReLU(),
        Conv(3, 3, padding="valid", w_std=0.9, b_std=0.1),
        Erf(),
        GlobalAvgPool(),
        Dense(1, w_std=1.1, b_std=0.3),
    )

    def ref(xa, xb, same):
        st = ref_conv(ref_input(xa, xb), 3, (3, 2), (2, 1), "same", 1.3, 0.2)
        st = ref_activation(st, ("abslinear", 0.5, 0.5), same)
        st = ref_conv(st, 3, (3, 3), (1, 1), "valid", 0.9, 0.1)
        st = ref_activation(st, ("erf",), same)
        return ref_dense(ref_readout(st, "gap"), 1.1, 0.3)

    return arch, ref, (2, 7, 5)


def case_circular_1d_avgpool_flatten():
    arch = Serial(
        Conv(4, 3, stride=2, padding="circular", w_std=1.2, b_std=0.0),
        AbsLinear(0.3, -0.8),
        Conv(4, 2, padding="same", w_std=1.0, b_std=0.4),
        ReLU(),
        AvgPool(2),
        Flatten(),
        Dense(1, w_std=1.0, b_std=0.1),
    )

    def ref(xa, xb, same):
        st = ref_conv(ref_input(xa, xb), 4, (3,), (2,), "circular", 1.2, 0.0)
        st = ref_activation(st, ("abslinear", 0.3, -0.8), same)
        st = ref_conv(st, 4, (2,), (1,), "same", 1.0, 0.4)
        st = ref_activation(st, ("abslinear", 0.5, 0.5), same)
        st = ref_avgpool(st, (2,), (2,))
        return ref_dense(ref_readout(st, "flatten"), 1.0, 0.1)

    return arch, ref, (3, 9)


def case_residual_layernorm_standard():
    arch = Serial(
        Conv(5, 3, w_std=1.1, b_std=0.1),
        Residual(ReLU(), Conv(5, 3, w_std=0.8, b_std=0.2), ReLU(), Conv(5, 1, w_std=0.7)),
        LayerNorm(),
        ReLU(),
        Conv(6, 2, padding="valid", w_std=1.0, b_std=0.3, parametrization="standard"),
        ReLU(),
        GlobalAvgPool(),
        Dense(1, w_std=1.0, b_std=0.2, parametrization="standard"),
    )

    def ref(xa, xb, same):
        x0 = ref_conv(ref_input(xa, xb), 5, (3, 3), (1, 1), "same", 1.1, 0.1)
        br = ref_activation(x0, ("abslinear", 0.5, 0.5), same)
        br = ref_conv(br, 5, (3, 3), (1, 1), "same", 0.8, 0.2)
        br = ref_activation(br, ("abslinear", 0.5, 0.5), same)
        br = ref_conv(br, 5, (1, 1), (1, 1), "same", 0.7, 0.0)
        st = ref_sum(x0, br)
        st["c"] = 5
        st = ref_layernorm(st)
        st = ref_activation(st, ("abslinear", 0.5, 0.5), same)
        st = ref_conv(st, 6, (2, 2), (1, 1), "valid", 1.0, 0.3, parametrization="standard")
        st = ref_activation(st, ("abslinear", 0.5, 0.5), same)
        return ref_dense(ref_readout(st, "gap"), 1.0, 0.2, n_in=6, parametrization="standard")

    return arch, ref, (2, 4, 4)


def case_branches_concat():
    arch = Serial(
        Conv(4, 3, w_std=1.2, b_std=0.1),
        FanOut(2),
        Parallel(Serial(ReLU(), Conv(6, 3, b_std=0.2)), Serial(Erf(), Conv(2, 1, w_std=1.4))),
        FanInConcat(),
        ReLU(),
        FanOut(2),
        Parallel(Conv(3, 3), Conv(3, 1, w_std=0.5)),
        FanInSum(),
        ReLU(),
        Flatten(),
        Dense(1),
    )

    def ref(xa, xb, same):
        x0 = ref_conv(ref_input(xa, xb), 4, (3,), (1,), "same", 1.2, 0.1)
        a = ref_conv(ref_activation(x0, ("abslinear", 0.5, 0.5), same), 6, (3,), (1,), "same", 1.0, 0.2)
        b = ref_conv(ref_activation(x0, ("erf",), same), 2, (1,), (1,), "same", 1.4, 0.0)
        st = ref_sum(a, b, 6 / 8, 2 / 8)
        st = ref_activation(st, ("abslinear", 0.5, 0.5), same)
        st = ref_sum(
            ref_conv(st, 3, (3,), (1,), "same", 1.0, 0.0), ref_conv(st, 3, (1,), (1,), "same", 0.5, 0.0)
        )
        st = ref_activation(st, ("abslinear", 0.5, 0.5), same)
        return ref_dense(ref_readout(st, "flatten"), 1.0, 0.0)

    return arch, ref, (2, 6)


CASES = [
    case_gap_2d,
    case_circular_1d_avgpool_flatten,
    case_residual_layernorm_standard,
    case_branches_concat,
]


@pytest.mark.parametrize("route", ["eager", "fused"])
@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_spatial_kernels_match_the_brute_force_recursion(case, route, monkeypatch, fused_calls):
    # "fused": the torch.compile'd loops of layers/_fused.py (TorchInductor's C++ backend: needs a compiler).
    if route == "fused" and shutil.which("g++") is None:
        pytest.skip("no C++ compiler for TorchInductor")
    monkeypatch.setenv("NTKIT_COMPILE", "1" if route == "fused" else "0")
    arch, ref, shape = case()
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(3, *shape, generator=generator, dtype=torch.float64)
    k = arch.kernel(x)
    # The fused route ran fused loops (every case has NTK-parametrized Convs), the eager route none.
    assert (all(fused_calls) and bool(fused_calls)) if route == "fused" else not fused_calls
    for i in range(3):
        for j in range(3):
            expected = ref(_to_numpy(x[i]), _to_numpy(x[j]), same=i == j)
            for name, got in (("s12", k.nngp[i, j]), ("t12", k.ntk[i, j])):
                # Both routes are float64 sums of a few hundred terms of size ~1: rounding stays below 1e-13.
                assert abs(float(got) - expected[name]) <= 1e-12 * max(1.0, abs(expected[name])), (
                    name,
                    i,
                    j,
                    float(got),
                    expected[name],
                )
