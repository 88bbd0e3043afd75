"""A conformance suite every layer passes (in the spirit of scikit-learn's check_estimator), and bad input.

Each layer is placed in the smallest architecture that can carry it to a kernel; the checks are properties that
hold for any correct kernel map, tested through independent routes: the symmetric route K(X, X) against the
rectangular one K(X, X'), each example alone against the batch, float32 against float64, the finite module's
shapes against the description's, and the layerwise empirical NTK of the built network against brute-force
per-example gradients.
"""

from __future__ import annotations

import pytest
import torch

import ntkit
from ntkit.layers import (
    GELU,
    Abs,
    AvgPool,
    Conv,
    Dense,
    Elementwise,
    Erf,
    FanInConcat,
    FanInSum,
    FanOut,
    Flatten,
    GlobalAvgPool,
    LayerError,
    LayerNorm,
    Parallel,
    ReLU,
    Residual,
    Serial,
    Tanh,
)


# (name, architecture, per-example input shape); a function, so that a test can build a second, equal copy
def _architectures():
    return [
        ("dense", Serial(Dense(8, b_std=0.1), ReLU(), Dense(1)), (4,)),
        ("dense-layernorm", Serial(Dense(8, b_std=0.3), LayerNorm(), Erf(), Dense(1)), (4,)),
        ("conv1d-flatten", Serial(Conv(6, 3, b_std=0.2), ReLU(), Flatten(), Dense(1)), (2, 7)),
        (
            "conv1d-circular-gap",
            Serial(Conv(6, 3, padding="circular"), Abs(), GlobalAvgPool(), Dense(1)),
            (2, 6),
        ),
        (
            "conv2d-valid-stride",
            Serial(Conv(6, (2, 3), stride=2, padding="valid"), GELU(), Flatten(), Dense(1)),
            (1, 6, 7),
        ),
        (
            "conv2d-gap",
            Serial(Conv(6, 3, w_std=1.4, b_std=0.1), Tanh(), GlobalAvgPool(), Dense(2)),
            (2, 5, 4),
        ),
        (
            "avgpool",
            Serial(Conv(6, 3), ReLU(), AvgPool(2), Conv(6, 2), ReLU(), Flatten(), Dense(1)),
            (1, 6, 6),
        ),
        (
            "avgpool-same",
            Serial(Conv(6, 3), ReLU(), AvgPool(3, stride=1, padding="same"), GlobalAvgPool(), Dense(1)),
            (1, 5, 5),
        ),
        ("layernorm-spatial", Serial(Conv(6, 3), LayerNorm(), ReLU(), GlobalAvgPool(), Dense(1)), (2, 4, 4)),
        (
            "residual",
            Serial(
                Conv(6, 3),
                Residual(ReLU(), Conv(6, 3), ReLU(), Conv(6, 3)),
                ReLU(),
                GlobalAvgPool(),
                Dense(1),
            ),
            (2, 4, 4),
        ),
        (
            "fanout-concat",
            Serial(
                Conv(4, 3),
                FanOut(2),
                Parallel(Serial(ReLU(), Conv(6, 1)), Conv(2, 3)),
                FanInConcat(),
                ReLU(),
                Flatten(),
                Dense(1),
            ),
            (2, 6),
        ),
        (
            "fanout-sum",
            Serial(Dense(6), FanOut(3), Parallel(ReLU(), Erf(), Dense(6)), FanInSum(), Dense(1)),
            (3,),
        ),
        (
            "standard",
            Serial(
                Conv(6, 3, b_std=0.1, parametrization="standard"),
                ReLU(),
                Flatten(),
                Dense(1, parametrization="standard"),
            ),
            (2, 5),
        ),
        ("frozen", Serial(Conv(6, 3, trainable=False), ReLU(), GlobalAvgPool(), Dense(1)), (1, 4, 4)),
        (
            "elementwise",
            Serial(Conv(6, 2), Elementwise(torch.sin, torch.cos, order=32), Flatten(), Dense(1)),
            (1, 4, 3),
        ),
    ]


ARCHITECTURES = _architectures()
IDS = [a[0] for a in ARCHITECTURES]


def _inputs(shape, n=5, dtype=torch.float64):
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(n, *shape, generator=generator, dtype=dtype)
    x[2] = x[0]  # a duplicated example
    x[3] = 0.0  # a zero example
    return x


@pytest.mark.parametrize(("name", "arch", "shape"), ARCHITECTURES, ids=IDS)
def test_layer_conformance(name, arch, shape):
    x = _inputs(shape)
    k = arch.kernel(x)
    for m in (k.nngp, k.ntk):
        assert m.shape == (5, 5) and m.dtype == torch.float64
        assert torch.isfinite(m).all()
        assert torch.equal(m, m.T)  # K(X, X) is exactly symmetric
        eigenvalues = torch.linalg.eigvalsh(m)
        assert eigenvalues.min() >= -1e-12 * eigenvalues.abs().max()
        # a duplicated example has the same row; a zero example is no NaN
        torch.testing.assert_close(m[2], m[0], rtol=1e-13, atol=0)
    if name != "frozen":  # nonzero examples have a positive NTK (the zero one has none without biases)
        assert float(k.ntk.diagonal()[[0, 1, 4]].min()) > 0

    # the symmetric (upper-triangle) route equals the rectangular route, and each example alone
    rect = arch.kernel(x, x.clone())
    torch.testing.assert_close(rect.nngp, k.nngp, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(rect.ntk, k.ntk, rtol=1e-13, atol=1e-15)
    for i in (0, 4):
        alone = arch.kernel(x[i : i + 1])
        # (not bitwise: vectorised and scalar loops of asin/sqrt may round differently)
        torch.testing.assert_close(alone.nngp[0, 0], k.nngp[i, i], rtol=1e-14, atol=0)
        torch.testing.assert_close(alone.ntk[0, 0], k.ntk[i, i], rtol=1e-13, atol=0)
    # a block of a larger computation is the same block computed alone (tiles do not leak into each other)
    part = arch.kernel(x[:2], x[3:], memory_budget=2**20 if len(shape) > 1 else 2**16)
    torch.testing.assert_close(part.ntk, k.ntk[:2, 3:], rtol=1e-13, atol=1e-15)

    # float32 keeps its dtype and agrees with float64 to float32's precision
    k32 = arch.kernel(x.float())
    assert k32.ntk.dtype == torch.float32
    torch.testing.assert_close(k32.ntk.double(), k.ntk, rtol=2e-5, atol=2e-5 * float(k.ntk.abs().max()))

    # the finite twin: shapes agree with the description, and its layerwise empirical NTK is exact
    net = arch.build(shape if len(shape) > 1 else shape[0], seed=1, dtype=torch.float64)
    out = net(x)
    assert tuple(out.shape[1:]) == arch.out_shape(tuple(shape))
    fast = ntkit.empirical_ntk(net, x, method="layerwise")
    slow = ntkit.empirical_ntk(net, x, method="jacobian")
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("name", "arch", "shape"), ARCHITECTURES, ids=IDS)
def test_fingerprint_is_by_content(name, arch, shape):
    # A second architecture built from the same code: a distinct object of equal content, equal fingerprint.
    twin = {n: a for n, a, _ in _architectures()}[name]
    assert twin is not arch and twin.fingerprint() == arch.fingerprint()
    others = {a.fingerprint() for n, a, _ in ARCHITECTURES if n != name}
    assert arch.fingerprint() not in others


def test_fingerprint_tells_user_functions_apart():
    a = Elementwise(lambda s: torch.sin(s))
    b = Elementwise(lambda s: torch.cos(s))
    assert repr(a) == repr(b)  # the old store key: the same text for both
    assert a.fingerprint() != b.fingerprint()
    assert Elementwise(torch.tanh).fingerprint() == Elementwise(torch.tanh).fingerprint()
    assert Elementwise(torch.tanh).fingerprint() != Elementwise(torch.erf).fingerprint()

    def make(k):
        return Elementwise(lambda s: torch.sin(k * s))

    assert make(2.0).fingerprint() != make(3.0).fingerprint()  # closures are part of the identity
    assert Dense(3, w_std=1.0).fingerprint() != Dense(3, w_std=1.0 + 2**-50).fingerprint()  # every bit


def test_store_does_not_mix_elementwise_functions(tmp_path):
    x = torch.randn(6, 3, dtype=torch.float64)
    sin = Serial(Dense(4), Elementwise(lambda s: torch.sin(s), order=24), Dense(1))
    cos = Serial(Dense(4), Elementwise(lambda s: torch.cos(s), order=24), Dense(1))
    sin.kernel(x, store=tmp_path / "k")
    with pytest.raises(ValueError, match="store"):
        cos.kernel(x, store=tmp_path / "k")


def test_unidentifiable_functions_are_refused_only_for_the_store(tmp_path):
    class Opaque:
        def __call__(self, s):
            return torch.sin(s)

    arch = Serial(Dense(4), Elementwise(Opaque(), order=16), Dense(1))
    x = torch.randn(3, 2, dtype=torch.float64)
    assert torch.isfinite(arch.kernel(x).ntk).all()
    with pytest.raises(ValueError, match="fingerprint"):
        arch.kernel(x, store=tmp_path / "k")


def test_spatial_store_resumes_with_the_same_values(tmp_path):
    arch = Serial(Conv(4, 3), ReLU(), Conv(4, 3), ReLU(), GlobalAvgPool(), Dense(1))
    x = torch.randn(20, 1, 4, 4, dtype=torch.float64)
    expected = arch.kernel(x)
    stored = arch.kernel(x, store=tmp_path / "k")
    again = arch.kernel(x, store=tmp_path / "k")
    assert torch.equal(stored.ntk, expected.ntk) and torch.equal(again.nngp, expected.nngp)


@pytest.mark.parametrize(
    ("arch", "x", "match"),
    [
        (
            Serial(Conv(4, 3), ReLU(), Flatten(), Dense(1)),
            torch.ones(3, 5),
            r"layers\[0\] Conv.*channels-first",
        ),
        (
            Serial(Conv(4, 3), ReLU(), Dense(1)),
            torch.ones(3, 1, 5),
            r"layers\[2\] Dense.*Flatten\(\) or GlobalAvgPool",
        ),
        (
            Serial(Conv(4, 7, padding="valid"), ReLU(), Flatten(), Dense(1)),
            torch.ones(3, 1, 5),
            r"layers\[0\].*valid.*window of 7",
        ),
        (Serial(GlobalAvgPool(), Dense(1)), torch.ones(3, 4), r"layers\[0\] GlobalAvgPool.*channels-first"),
        (Serial(Conv(4, (3, 3)), Flatten(), Dense(1)), torch.ones(3, 1, 5), "kernel_size"),
        (Serial(Conv(4, 3), Flatten(), Dense(1)), torch.ones(3, 1, 5, 5), None),  # fine: a control
        (
            Serial(
                Conv(4, 3),
                FanOut(2),
                Parallel(Conv(4, 3), Conv(4, 3, stride=2)),
                FanInSum(),
                Flatten(),
                Dense(1),
            ),
            torch.ones(3, 1, 6),
            r"layers\[3\] FanInSum.*one shape",
        ),
        (
            Serial(Dense(4), FanOut(2), Parallel(ReLU(), ReLU()), Dense(1)),
            torch.ones(3, 2),
            r"layers\[3\] Dense",
        ),
        (Serial(Dense(4), FanOut(2), Parallel(ReLU(), ReLU())), torch.ones(3, 2), "close every FanOut"),
        (
            Serial(Dense(4), Parallel(ReLU(), ReLU()), Dense(1)),
            torch.ones(3, 2),
            r"layers\[1\] Parallel.*FanOut\(2\)",
        ),
        (Serial(Dense(4), FanInSum(), Dense(1)), torch.ones(3, 2), r"layers\[1\] FanInSum.*single input"),
        (
            Serial(Conv(4, 3), Residual(Conv(4, 3, stride=2)), Flatten(), Dense(1)),
            torch.ones(3, 1, 6),
            r"layers\[1\] Residual.*keep the shape",
        ),
        (Serial(Conv(4, 3), ReLU(), Flatten()), torch.ones(3, 1, 6), None),  # features out: fine
        (Serial(Conv(4, 3), ReLU()), torch.ones(3, 1, 6), "Flatten"),
        (
            Serial(Conv(4, 3), ReLU(), Residual(ReLU(), Conv(4, 3)), ReLU(), Flatten(), Dense(1)),
            torch.ones(3, 1, 6),
            r"layers\[2\] Residual: layers\[0\] ReLU.*Gaussian",
        ),
        (
            Serial(Conv(4, 3), Serial(ReLU(), Tanh()), Flatten(), Dense(1)),
            torch.ones(3, 1, 6),
            r"layers\[1\] Serial: layers\[1\] Tanh",
        ),
    ],
)
def test_bad_architectures_name_the_layer_before_any_work(arch, x, match):
    if match is None:
        assert torch.isfinite(arch.kernel(x.double()).nngp).all()
        return
    with pytest.raises(LayerError, match=match):
        arch.kernel(x.double())


def test_build_checks_shapes_too():
    with pytest.raises(LayerError, match=r"layers\[2\] Dense"):
        Serial(Conv(4, 3), ReLU(), Dense(1)).build((1, 5))
    with pytest.raises(ValueError, match="in_shape"):
        Serial(Conv(4, 3), Flatten(), Dense(1)).build((1, 2, 3, 4))
    with pytest.raises(TypeError, match=r"layers\[1\]"):
        Serial(Conv(4, 3), torch.nn.ReLU())


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Conv(0, 3), "channels"),
        (lambda: Conv(4, 0), "kernel_size"),
        (lambda: Conv(4, (3, 3, 3)), "kernel_size"),
        (lambda: Conv(4, 3, stride=(1, 2, 3)), "stride"),
        (lambda: Conv(4, 3, padding="reflect"), "padding"),
        (lambda: Conv(4, 3, w_std=-1.0), "w_std"),
        (lambda: AvgPool(2, padding="circular"), "padding"),
        (lambda: FanOut(0), "n"),
        (lambda: Parallel(), "branches"),
        (lambda: Residual(), "layers"),
        (lambda: LayerNorm(eps=-1.0), "eps"),
    ],
)
def test_bad_layer_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_even_kernels_with_same_padding_pad_like_tensorflow():
    """'same' with an even size pads one more position after than before (TensorFlow's, JAX's and
    neural-tangents' rule); the finite module does the same, so its output keeps the input's length."""
    arch = Serial(Conv(3, 4, padding="same"), ReLU(), Flatten(), Dense(1))
    net = arch.build((1, 7), seed=0, dtype=torch.float64)
    assert net(torch.ones(2, 1, 7, dtype=torch.float64)).shape == (2, 1)
    assert net[0].pads == (1, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_spatial_kernels_on_cuda_equal_the_cpu_ones():
    arch = Serial(Conv(6, 3), Residual(ReLU(), Conv(6, 3)), ReLU(), AvgPool(2), Flatten(), Dense(1))
    x = _inputs((2, 6, 6))
    cpu = arch.kernel(x)
    cuda = arch.kernel(x.cuda())
    assert cuda.ntk.device.type == "cuda" and cuda.ntk.dtype == torch.float64
    torch.testing.assert_close(cuda.ntk.cpu(), cpu.ntk, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(cuda.nngp.cpu(), cpu.nngp, rtol=1e-12, atol=1e-14)
