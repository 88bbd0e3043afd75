"""Every method of empirical_ntk against brute-force autograd: per-example gradients and explicit inner
products.

The reference loops over examples and outputs, calls torch.autograd.grad on the model itself (no torch.func,
no hooks), flattens the gradients and takes inner products, so it shares no code with the methods under test.
In float64 the two routes differ only by rounding in differently ordered sums of a few hundred terms, ~1e-15
relative; 1e-10 leaves five orders of magnitude for that and still catches any missed or doubled term, which
is O(1) of the entry it belongs to.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ntkit import layers
from ntkit.empirical import empirical_ntk

METHODS = ("jacobian", "ntk-vp", "layerwise", "auto")
RTOL = 1e-10


def brute_force(
    model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, params: list[torch.Tensor] | None = None
):
    """T_ab(x1_i, x2_j) by explicit per-example, per-output gradients: shape (n1, n2, k, k)."""
    params = [p for p in model.parameters() if p.requires_grad] if params is None else params

    def jacobian(x: torch.Tensor) -> torch.Tensor:
        rows = []
        for i in range(x.shape[0]):
            out = model(x[i : i + 1]).reshape(-1)
            per_output = []
            for a in range(out.numel()):
                grads = torch.autograd.grad(out[a], params, retain_graph=True, allow_unused=True)
                flat = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]
                per_output.append(torch.cat([g.reshape(-1) for g in flat]))
            rows.append(torch.stack(per_output))
        return torch.stack(rows)

    j1, j2 = jacobian(x1), jacobian(x2)
    return torch.einsum("iap,jbp->ijab", j1, j2)


def reduce(full: torch.Tensor, outputs: str) -> torch.Tensor:
    if outputs == "full":
        return full
    diagonal = full.diagonal(dim1=2, dim2=3)
    return diagonal if outputs == "diagonal" else diagonal.mean(-1)


def assert_close(result: torch.Tensor, reference: torch.Tensor) -> None:
    assert result.shape == reference.shape
    assert result.dtype == reference.dtype
    scale = reference.abs().max()
    assert scale > 0, "a reference of zeros would test nothing"
    error = (result - reference).abs().max() / scale
    assert error < RTOL, f"relative error {error:.2e}"


def check_all(
    model, x1, x2=None, outputs=("mean", "diagonal", "full"), methods=METHODS, params=None, **kwargs
):
    ref_params = None
    if params is not None:
        lookup = dict(model.named_parameters(remove_duplicate=False))
        ref_params = list(
            {id(p): p for p in (lookup[q] if isinstance(q, str) else q for q in params)}.values()
        )
    reference = brute_force(model, x1, x1 if x2 is None else x2, ref_params)
    for method in methods:
        for mode in outputs:
            result = empirical_ntk(model, x1, x2, outputs=mode, method=method, params=params, **kwargs)
            assert_close(result, reduce(reference, mode))


# ------------------------------------------------------------------------------------------------------------
# models


def deep_mlp(out: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 9),
        nn.Tanh(),
        nn.Linear(9, 8),
        nn.ReLU(),
        nn.Linear(8, 8),
        nn.GELU(),
        nn.Linear(8, 7),
        nn.Softplus(),
        nn.Linear(7, out),
    ).double()


def cnn(out: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding="same", groups=2), nn.Tanh(),
        nn.Conv2d(6, 5, 2, stride=2, dilation=1, bias=False), nn.GroupNorm(5, 5), nn.ReLU(),
        nn.AvgPool2d(2, ceil_mode=True), nn.Flatten(), nn.Linear(5, out),
    ).double()  # fmt: skip


class TokenModel(nn.Module):
    """Embedding (with padding) -> LayerNorm -> Linear on every position -> mean over positions -> Linear."""

    def __init__(self, vocab: int = 11, dim: int = 6, out: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.norm = nn.LayerNorm(dim)
        self.mix = nn.Linear(dim, 5)
        self.head = nn.Linear(5, out)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.mix(self.norm(self.embed(tokens))))
        return self.head(h.mean(dim=1))


class TiedModel(nn.Module):
    """A decoder tied to the embedding, and one Linear called twice: cross terms between uses must count."""

    def __init__(self, vocab: int = 7, dim: int = 5):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.shared = nn.Linear(dim, dim)
        self.decode = nn.Linear(dim, vocab, bias=False)
        self.decode.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens).sum(dim=1)
        h = self.shared(torch.tanh(self.shared(h)))
        return self.decode(torch.sin(h))


class SharedLinear(nn.Module):
    """The same Linear applied at two depths, with different inputs each time."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.hidden = nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.hidden(h))
        h = torch.relu(self.hidden(h) + h)
        return self.out(h)


class Scale(nn.Module):
    """A layer ntkit has no rule for: elementwise scale and shift, with its own parameters."""

    def __init__(self, dim: int):
        super().__init__()
        self.gain = nn.Parameter(torch.randn(dim))
        self.shift = nn.Parameter(torch.randn(dim))

    def forward(self, x):
        return x * self.gain + torch.sin(self.shift)


class Unusual(nn.Module):
    """Unknown layers, a root parameter, in-place ReLU after Linear, a weight used outside its module."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.act = nn.ReLU(inplace=True)
        self.scale = Scale(6)
        self.fc2 = nn.Linear(6, 6)
        self.temperature = nn.Parameter(torch.tensor(0.7))
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = self.scale(self.act(self.fc(x)))
        # fc2.weight is used a second time outside fc2's forward
        h = torch.tanh(self.fc2(h)) + torch.tanh(F.linear(h, self.fc2.weight))
        return self.head(h) * self.temperature


class Sequence(nn.Module):
    """Linear and Conv1d on sequences: extra leading dimensions and positions."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm1d(4)
        self.proj = nn.Linear(4, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):  # x: (n, 3, L)
        h = torch.tanh(self.norm(self.conv(x))).transpose(1, 2)  # (n, L, 4)
        return self.head(torch.tanh(self.proj(h)).mean(dim=1))


# ------------------------------------------------------------------------------------------------------------
# tests


def test_deep_mlp_all_outputs_with_x2():
    model = deep_mlp(out=3)
    check_all(model, torch.randn(5, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64))


def test_deep_mlp_single_output_shapes():
    model = deep_mlp(out=1)
    x = torch.randn(4, 6, dtype=torch.float64)
    check_all(model, x)
    assert empirical_ntk(model, x).shape == (4, 4)
    assert empirical_ntk(model, x, outputs="diagonal").shape == (4, 4, 1)
    assert empirical_ntk(model, x, outputs="full").shape == (4, 4, 1, 1)


def test_cnn_with_pooling_groups_and_flatten():
    model = cnn(out=3)
    check_all(model, torch.randn(4, 2, 8, 8, dtype=torch.float64))


def test_cnn_with_batchnorm_in_eval_mode():
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)
    ).double()
    with torch.no_grad():  # non-trivial running statistics
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    model.eval()
    check_all(model, torch.randn(4, 1, 6, 6, dtype=torch.float64), outputs=("full",))


def test_layernorm_and_embedding_with_integer_tokens():
    model = TokenModel().double()
    tokens = torch.randint(0, 11, (5, 4))
    tokens[0, 1] = 0  # the padding index gets no gradient
    check_all(model, tokens)
    check_all(model, tokens[:3], torch.randint(0, 11, (2, 4)), outputs=("full",))


def test_tied_embedding_decoder_and_module_called_twice():
    model = TiedModel().double()
    check_all(model, torch.randint(0, 7, (4, 3)))
    check_all(SharedLinear().double(), torch.randn(4, 4, dtype=torch.float64))


def test_unknown_layers_root_parameter_inplace_and_outside_use():
    model = Unusual().double()
    check_all(model, torch.randn(4, 4, dtype=torch.float64))


def test_sequences_linear_leading_dims_conv1d_batchnorm_eval():
    model = Sequence().double().eval()
    check_all(model, torch.randn(4, 3, 6, dtype=torch.float64))


def test_partially_frozen_model():
    model = deep_mlp(out=2)
    model[0].requires_grad_(False)
    model[4].bias.requires_grad_(False)
    check_all(model, torch.randn(4, 6, dtype=torch.float64), outputs=("full",))


@pytest.mark.parametrize("by", ["name", "tensor"])
def test_params_subset(by):
    model = TiedModel().double()
    chosen = ["shared.weight", "decode.weight"] if by == "name" else [model.shared.weight, model.embed.weight]
    check_all(model, torch.randint(0, 7, (4, 3)), params=chosen, outputs=("full", "mean"))


def test_x2_none_equals_x2_x1_and_blocks_match_one_block():
    model = deep_mlp(out=2)
    x = torch.randn(7, 6, dtype=torch.float64)
    for method in METHODS:
        whole = empirical_ntk(model, x, x, outputs="full", method=method)
        # x2=None computes only blocks on and above the diagonal, and mirrors them with the output axes
        # swapped
        for batch in (None, 2, 3):
            sym = empirical_ntk(model, x, outputs="full", method=method, batch_size=batch)
            assert_close(sym, whole)
            assert_close(sym, sym.permute(1, 0, 3, 2))


@pytest.mark.parametrize("method", METHODS)
def test_x2_none_is_exactly_symmetric_for_every_method(method):
    # T_ab(x, x') == T_ba(x', x) bit for bit, also inside the blocks on the diagonal (each method contracts a
    # diagonal block's upper triangle and mirrors it); a whole-block contraction would differ by rounding.
    model = deep_mlp(out=2)
    x = torch.randn(9, 6, dtype=torch.float64)
    for mode in ("mean", "diagonal", "full"):
        for batch in (None, 4):
            sym = empirical_ntk(model, x, outputs=mode, method=method, batch_size=batch)
            mirrored = sym.transpose(0, 1)
            assert torch.equal(sym, mirrored.transpose(2, 3) if mode == "full" else mirrored)


def test_ntklinear_networks_from_the_foundation():
    arch = layers.mlp(2, 16, out=2, activation=layers.Erf(), b_std=0.3)
    model = arch.build(5, seed=3, dtype=torch.float64)
    check_all(model, torch.randn(4, 5, dtype=torch.float64))
    standard = layers.mlp(1, 8, out=1, parametrization="standard", b_std=0.5).build(
        5, seed=1, dtype=torch.float64
    )
    check_all(standard, torch.randn(3, 5, dtype=torch.float64), outputs=("mean",))


def test_float32_keeps_dtype_and_numpy_inputs_are_accepted():
    model = deep_mlp(out=2).float()
    x = torch.randn(4, 6)
    result = empirical_ntk(model, x.numpy(), outputs="full")
    assert result.dtype == torch.float32
    reference = empirical_ntk(model.double(), x.double(), outputs="full", method="jacobian")
    # float32 round-off in a few hundred products: 1e-4 relative is ~1000 ulps of headroom
    assert ((result.double() - reference).abs().max() / reference.abs().max()) < 1e-4


@pytest.mark.parametrize("representation", ["factored", "dense"])
def test_layerwise_factored_and_materialised_contractions_agree_with_autograd(representation):
    # The cost model picks a representation per layer; forcing each one covers both contractions on every rule
    # (positions S > 1 from sequences, patches and a module called twice).
    from ntkit.empirical._problem import make_problem
    from ntkit.empirical.layerwise import layerwise_ntk

    cases = [
        (cnn(out=2), torch.randn(3, 2, 8, 8, dtype=torch.float64)),
        (Sequence().double().eval(), torch.randn(3, 3, 6, dtype=torch.float64)),
        (TokenModel().double(), torch.randint(0, 11, (4, 4))),
        (SharedLinear().double(), torch.randn(4, 4, dtype=torch.float64)),
    ]
    for model, x in cases:
        reference = brute_force(model, x, x, None)
        for mode in ("mean", "diagonal", "full"):
            problem, x1, _ = make_problem(model, x, None, mode, "layerwise", None, None, False)
            result = layerwise_ntk(problem, x1, None, representation=representation)
            assert_close(result, reduce(reference, mode))


def test_layerwise_uses_its_structured_rules_where_it_has_them():
    # Exactness alone cannot show this: a rule that went wrong would be caught by the layerwise self-check and
    # replaced by whole-model Jacobians, still exact but slow. So check where each parameter went.
    from ntkit.empirical.layerwise import explain

    net = layers.mlp(2, 8, out=1, b_std=0.1).build(4, seed=0, dtype=torch.float64)
    how = explain(net, torch.randn(3, 4, dtype=torch.float64))
    assert how["2.weight"] == how["2.bias"] == "factored"  # NTKLinear, hidden to hidden
    assert set(how.values()) <= {"factored", "dense"}
    how = explain(TokenModel().double(), torch.randint(0, 11, (3, 4)))
    assert how["embed.weight"] == "onehot" and how["norm.weight"] == how["norm.bias"] == "dense"
    how = explain(cnn(), torch.randn(3, 2, 8, 8, dtype=torch.float64))
    assert "jacobian" not in how.values() and "module-vjp" not in how.values()
    how = explain(Unusual().double(), torch.randn(3, 4, dtype=torch.float64))
    assert how["scale.gain"] == how["temperature"] == "module-vjp"
    # also used by F.linear outside fc2's forward: the hooks cannot see that use
    assert how["fc2.weight"] == "jacobian"
    assert how["fc2.bias"] != "jacobian" and how["fc.weight"] == "factored"


class Branchy(nn.Module):
    """Data-dependent control flow in a layer with its own parameter: torch.func's vmap cannot trace it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.gate = nn.Parameter(torch.randn(4))

    def forward(self, x):
        h = torch.tanh(self.fc(x))
        if float(h.detach().abs().max()) <= 1:  # a Python branch on the data (always taken: |tanh| <= 1)
            h = h * self.gate
        return h.sum(dim=1, keepdim=True)


class TupleLayer(nn.Module):
    """A layer returning two tensors, called with a keyword argument."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.randn(4, 4))
        self.b = nn.Parameter(torch.randn(4))

    def forward(self, x, *, shift):
        return torch.tanh(x @ self.a), x * self.b + shift


class Attention(nn.Module):
    """A tiny transformer block: MultiheadAttention uses out_proj.weight without calling out_proj."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 4)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.norm = nn.LayerNorm(4)
        self.pair = TupleLayer()
        self.head = nn.Linear(4, 2)

    def forward(self, x):  # x: (n, L, 3)
        h = self.inp(x)
        h = self.norm(h + self.attn(h, h, h, need_weights=False)[0])
        u, v = self.pair(h, shift=0.5)
        return self.head(fc_input(u, v)).mean(dim=1)


def fc_input(u, v):
    return u * torch.sigmoid(v)


def test_data_dependent_control_flow_falls_back_to_exact_jacobians():
    from ntkit.empirical.layerwise import explain

    model = Branchy().double()
    x = torch.randn(3, 3, dtype=torch.float64)
    check_all(model, x, outputs=("full",))
    # the root owns `gate` and cannot be vmapped: whole-model Jacobians, one example at a time
    assert explain(model, x)["gate"] == "jacobian"


def test_attention_tuple_outputs_and_keyword_arguments():
    from ntkit.empirical.layerwise import explain

    model = Attention().double().eval()
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    # in eval mode MultiheadAttention runs a fused kernel without forward-mode AD: no ntk-vp, and auto knows
    check_all(model, x, methods=("jacobian", "layerwise", "auto"))
    with pytest.raises(ValueError, match="method='ntk-vp' needs forward-mode differentiation"):
        empirical_ntk(model, x, method="ntk-vp")
    how = explain(model, x)
    assert how["attn.in_proj_weight"] == "module-vjp" and how["pair.a"] == "module-vjp"
    # used inside F.multi_head_attention_forward, not by a call of out_proj
    assert how["attn.out_proj.weight"] == "jacobian"
    assert how["inp.weight"] in ("factored", "dense")


class Chunked(nn.Module):
    """Runs large batches in two halves: the same function per example, but more calls than on the probe."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        if x.shape[0] > 3:
            h = torch.cat([self.lin(x[: len(x) // 2]), self.lin(x[len(x) // 2 :])])
        else:
            h = self.lin(x)
        return self.head(torch.tanh(h))


def test_structure_that_changes_with_the_batch_is_refused_by_layerwise_and_avoided_by_auto():
    from ntkit.empirical.layerwise import LayerwiseUnsupported

    model = Chunked().double()
    x = torch.randn(6, 3, dtype=torch.float64)
    with pytest.raises(LayerwiseUnsupported, match="use method='jacobian'"):
        empirical_ntk(model, x, method="layerwise")
    check_all(model, x, methods=("jacobian", "ntk-vp", "auto"))
