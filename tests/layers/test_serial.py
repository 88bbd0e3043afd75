"""Architecture descriptions: the kernel recursion against independent routes, tiling, storage and bad input."""

import math

import numpy as np
import pytest
import torch

import ntkit
from ntkit import layers
from ntkit.layers import Dense, ReLU, Serial, mlp
from ntkit.layers import kernel as layer_kernel
from ntkit.tiling import MemoryBudgetError


def relu_recursion(x, depth, w_std, b_std):
    """The textbook arc-cosine recursion on whole matrices (Cho & Saul 2009; Jacot et al. 2018), NTK param."""
    s = x @ x.T / x.shape[1]
    t = torch.zeros_like(s)
    for layer in range(depth + 1):
        s = w_std**2 * s + b_std**2
        t = w_std**2 * t + s
        if layer == depth:
            return s, t
        norms = torch.sqrt(torch.outer(torch.diagonal(s), torch.diagonal(s)))
        theta = torch.arccos(torch.clamp(s / norms, -1.0, 1.0))
        s = norms * (torch.sin(theta) + (math.pi - theta) * torch.cos(theta)) / (2 * math.pi)
        t = t * (math.pi - theta) / (2 * math.pi)


def test_relu_kernel_matches_textbook_recursion():
    x = torch.randn(40, 6, dtype=torch.float64)
    k = mlp(3, 10, activation=ReLU(), w_std=1.3, b_std=0.2).kernel(x)
    s, t = relu_recursion(x, 3, 1.3, 0.2)
    # The textbook route computes theta on the diagonal from a rounded ratio (error ~1e-8 in theta), so the two
    # agree to ~1e-8 relative there and to rounding elsewhere.
    torch.testing.assert_close(k.nngp, s, rtol=1e-7, atol=0)
    torch.testing.assert_close(k.ntk, t, rtol=1e-7, atol=0)


def test_standard_parametrization_recursion_by_hand():
    """T' = w^2 T + n_in S + 1 (Sohl-Dickstein et al. 2020), with the layer widths entering the NTK."""
    x = torch.randn(7, 3, dtype=torch.float64)
    arch = Serial(
        Dense(5, w_std=1.5, b_std=0.3, parametrization="standard"),
        ReLU(),
        Dense(1, w_std=0.7, b_std=0.4, parametrization="standard"),
    )
    k = arch.kernel(x)
    s0 = x @ x.T / 3
    s1 = 1.5**2 * s0 + 0.3**2
    t1 = 3 * s0 + 1
    norms = torch.sqrt(torch.outer(s1.diagonal(), s1.diagonal()))
    theta = torch.arccos(torch.clamp(s1 / norms, -1, 1))
    theta.fill_diagonal_(0.0)
    s2 = norms * (torch.sin(theta) + (math.pi - theta) * torch.cos(theta)) / (2 * math.pi)
    t2 = t1 * (math.pi - theta) / (2 * math.pi)
    torch.testing.assert_close(k.nngp, 0.7**2 * s2 + 0.4**2, rtol=1e-12, atol=0)
    torch.testing.assert_close(k.ntk, 0.7**2 * t2 + 5 * s2 + 1, rtol=1e-12, atol=0)


def test_frozen_last_layer_gives_first_layer_kernel():
    """Only the first layer trains: H*_ij = (x_i.x_j / d) E[relu'(u) relu'(v)] (Du et al. 2019; Arora et al. 2019)."""
    x = torch.nn.functional.normalize(torch.randn(20, 4, dtype=torch.float64), dim=1)
    arch = Serial(Dense(100, b_std=None), ReLU(), Dense(1, b_std=None, trainable=False))
    gram = x @ x.T
    theta = torch.arccos(torch.clamp(gram, -1, 1))
    theta.fill_diagonal_(0.0)
    expected = gram / 4 * (math.pi - theta) / (2 * math.pi)
    torch.testing.assert_close(arch.kernel(x).ntk, expected, rtol=1e-12, atol=1e-15)
    net = arch.build(4)
    assert not any(p.requires_grad for p in net[2].parameters())
    assert all(p.requires_grad for p in net[0].parameters())


def test_nothing_trainable_gives_zero_ntk():
    arch = Serial(Dense(3, trainable=False), ReLU(), Dense(1, trainable=False))
    k = arch.kernel(torch.randn(5, 2))
    assert torch.equal(k.ntk, torch.zeros(5, 5))


def test_symmetric_blocks_equal_rectangular_route():
    """K(X, X) from upper-triangle blocks mirrors exactly what the rectangular route computes."""
    x = torch.randn(70, 5, dtype=torch.float64)
    arch = mlp(2, 1, b_std=0.1)
    small = 6 * 8 * 16 * 16  # forces 16 x 16 blocks: 5 x 5 block grid with partial edge blocks
    sym = arch.kernel(x, memory_budget=small)
    rect = arch.kernel(x, x.clone(), memory_budget=small)
    full = arch.kernel(x)
    for name in ("nngp", "ntk"):
        a, b, c = getattr(sym, name), getattr(rect, name), getattr(full, name)
        assert torch.equal(a, a.T)
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)
        torch.testing.assert_close(a, c, rtol=1e-14, atol=0)


def test_rectangular_and_get():
    x1, x2 = torch.randn(9, 4, dtype=torch.float64), torch.randn(13, 4, dtype=torch.float64)
    arch = mlp(2, 1, b_std=0.1)
    k = arch.kernel(x1, x2)
    assert k.nngp.shape == k.ntk.shape == (9, 13)
    whole = arch.kernel(torch.cat([x1, x2]))
    # same entries through blocks of another shape: equal up to the rounding of the input dot products
    torch.testing.assert_close(k.ntk, whole.ntk[:9, 9:], rtol=1e-13, atol=0)
    only = arch.kernel(x1, x2, get="nngp")
    assert only.ntk is None
    torch.testing.assert_close(only.nngp, k.nngp, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_numpy_inputs(dtype):
    x = torch.randn(6, 3, dtype=dtype)
    k = mlp(1, 1).kernel(x)
    assert k.nngp.dtype == k.ntk.dtype == dtype
    k_np = mlp(1, 1).kernel(x.numpy())
    torch.testing.assert_close(k_np.ntk, k.ntk, rtol=0, atol=0)


def test_zero_inputs_and_duplicates_are_finite_and_exact():
    x = torch.randn(5, 3, dtype=torch.float64)
    x = torch.cat([x, x[:2], torch.zeros(2, 3, dtype=torch.float64)])
    arch = mlp(4, 1, b_std=0.0)  # no bias: zero inputs stay at zero variance through every layer
    k = arch.kernel(x)
    assert torch.isfinite(k.nngp).all() and torch.isfinite(k.ntk).all()
    # A duplicate pair sees theta = 0 exactly, so it equals the diagonal bit for bit.
    assert torch.equal(k.ntk[:2, 5:7].diagonal(), k.ntk[:2, :2].diagonal())
    # Elsewhere a duplicated row may differ by an ulp: vectorised and scalar tails of elementwise kernels round
    # differently depending on an entry's position in memory.
    torch.testing.assert_close(k.ntk[5:7], k.ntk[:2], rtol=4e-16, atol=1e-16)
    assert torch.equal(k.nngp[7:], torch.zeros(2, 9, dtype=torch.float64))
    # with a bias a zero input has the variance of the bias alone: S = b^2 after the first layer
    kb = mlp(1, 1, b_std=0.5, w_std=1.0).kernel(torch.zeros(1, 3, dtype=torch.float64))
    s1 = 0.25
    torch.testing.assert_close(kb.nngp[0, 0], torch.tensor(s1 / 2 + 0.25, dtype=torch.float64))


def test_duplicate_rows_match_diagonal_to_the_last_digit_through_depth():
    """Identical inputs must see theta = 0 exactly (DESIGN.md); otherwise sqrt of a cancelled difference
    loses half the digits and the error compounds with depth."""
    x = torch.randn(4, 50, dtype=torch.float64)
    x = torch.cat([x, x])
    k = mlp(10, 1, b_std=0.05).kernel(x, x.clone())
    torch.testing.assert_close(k.ntk[:4, 4:].diagonal(), k.ntk[:4, :4].diagonal(), rtol=1e-15, atol=0)


def test_store_resumes_an_interrupted_run(tmp_path, monkeypatch):
    x = torch.randn(60, 3, dtype=torch.float64)
    arch = mlp(2, 1, b_std=0.1)
    budget = 6 * 8 * 16 * 16
    expected = arch.kernel(x, memory_budget=budget)
    calls = {"n": 0}
    original = layer_kernel._tile

    def failing_block(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(layer_kernel, "_tile", failing_block)
    with pytest.raises(KeyboardInterrupt):
        arch.kernel(x, memory_budget=budget, store=tmp_path / "k")
    assert np.load(tmp_path / "k" / "done.npy").sum() == 3
    calls["n"] = -1000
    resumed = arch.kernel(x, memory_budget=budget, store=tmp_path / "k")
    total_blocks = 4 * 5 // 2  # 4 x 4 grid of 16-row blocks, upper triangle
    assert calls["n"] == -1000 + total_blocks - 3  # only the missing blocks were computed
    torch.testing.assert_close(resumed.ntk, expected.ntk, rtol=0, atol=0)
    torch.testing.assert_close(
        torch.from_numpy(np.load(tmp_path / "k" / "nngp.npy")), expected.nngp, rtol=0, atol=0
    )
    with pytest.raises(ValueError, match="store"):
        arch.kernel(x[:50], memory_budget=budget, store=tmp_path / "k")


def test_store_refuses_to_resume_with_other_blocks(tmp_path):
    """Blocks marked done under one tile size are not the blocks of another: resuming must not mix them."""
    x = torch.randn(100, 3, dtype=torch.float64)
    arch = mlp(2, 1, b_std=0.1)
    arch.kernel(x, memory_budget=6 * 8 * 50 * 50, store=tmp_path / "k")
    with pytest.raises(ValueError, match="store"):
        arch.kernel(x, memory_budget=6 * 8 * 60 * 60, store=tmp_path / "k")


def test_output_too_large_says_how_to_proceed():
    x = torch.zeros(1, 2)
    with pytest.raises(MemoryBudgetError, match="store="):
        mlp(1, 1).kernel(x.expand(3_000_000, 2))


def test_budget_too_small():
    with pytest.raises(MemoryBudgetError, match="memory_budget"):
        mlp(1, 1).kernel(torch.randn(4, 2), memory_budget=100)


@pytest.mark.parametrize(
    ("call", "match", "error"),
    [
        (lambda a: a.kernel(torch.tensor([[1.0, float("nan")]])), "x1 contains", ValueError),
        (
            lambda a: a.kernel(torch.ones(3, 2), torch.tensor([[float("inf"), 0.0]])),
            "x2 contains",
            ValueError,
        ),
        (lambda a: a.kernel(torch.ones(3, 2), torch.ones(3, 4)), "same number of features", ValueError),
        (lambda a: a.kernel(torch.ones(3, 2, dtype=torch.int64)), "floating dtype", TypeError),
        (lambda a: a.kernel(torch.ones(3)), "2-D", ValueError),
        (lambda a: a.kernel(torch.ones(3, 2), get="ntkk"), "get", ValueError),
        (lambda a: a.kernel([[1.0]]), "x1 must be a torch.Tensor", TypeError),
        (lambda a: a.build(0), "in_features", ValueError),
        (lambda a: a.build(2, dtype=torch.int32), "dtype", TypeError),
    ],
)
def test_bad_input(call, match, error):
    with pytest.raises(error, match=match):
        call(mlp(1, 4))


@pytest.mark.parametrize(
    ("make", "match", "error"),
    [
        (lambda: Dense(-3), "width", ValueError),
        (lambda: Dense(3, w_std=-1.0), "w_std", ValueError),
        (lambda: Dense(3, b_std=float("nan")), "b_std", ValueError),
        (lambda: Dense(3, parametrization="mup"), "parametrization", ValueError),
        (lambda: Serial(), "layers", ValueError),
        (
            lambda: Serial(ReLU(), Dense(1)).kernel(torch.ones(2, 3)),
            "layers\\[0\\] ReLU.*Gaussian",
            ValueError,
        ),
        (lambda: Serial(Dense(2), torch.nn.ReLU()), "layers\\[1\\]", TypeError),
        (lambda: mlp(2, 8, activation=torch.nn.ReLU()), "activation", TypeError),
        (lambda: layers.NTKLinear(0, 3), "in_features", ValueError),
        (lambda: layers.NTKLinear(2, 3, w_std=-1.0), "w_std", ValueError),
    ],
)
def test_bad_description(make, match, error):
    with pytest.raises(error, match=match):
        make()


def test_build_is_seeded_and_shaped():
    arch = mlp(2, 16, out=3, b_std=0.1)
    a, b = arch.build(5, seed=1), arch.build(5, seed=1)
    x = torch.randn(4, 5)
    assert a(x).shape == (4, 3)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert not torch.equal(arch.build(5, seed=2)(x), a(x))
    assert arch.out_features == 3
    assert ntkit.mlp is mlp


ALL_ACTIVATIONS = [
    layers.ReLU(),
    layers.LeakyReLU(0.2),
    layers.Abs(),
    layers.AbsLinear(0.3, -0.7),
    layers.Erf(),
    layers.GELU(),
    layers.Identity(),
    layers.Tanh(),
    layers.Sigmoid(),
    layers.Softplus(),
    layers.Elementwise(torch.sin),
]


@pytest.mark.parametrize("activation", ALL_ACTIVATIONS, ids=repr)
def test_kernels_are_symmetric_positive_semidefinite(activation):
    """Both kernels are Gram matrices (of outputs, of gradients), hence symmetric PSD for every activation."""
    x = torch.cat([torch.randn(14, 3, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64)])
    x = torch.cat([x, x[:3]])  # duplicates make the matrices singular: the hardest case for round-off
    k = mlp(3, 1, activation=activation, w_std=1.2, b_std=0.3).kernel(x)
    for m in (k.nngp, k.ntk):
        assert torch.isfinite(m).all()
        assert torch.equal(m, m.T)
        eigenvalues = torch.linalg.eigvalsh(m)
        # round-off in eigvalsh is ~n eps ||m||; quadrature kernels are PSD up to their 1e-6 accuracy
        assert eigenvalues[0] >= -1e-9 * eigenvalues[-1], eigenvalues[:3]
