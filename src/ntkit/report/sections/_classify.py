"""What the two digits sections (7 and 8) share: class scores, the centred network's training, the output scatter."""

from __future__ import annotations

import torch

from .._context import Context, diverged
from .._plot import COLORS
from ..data import Digits


def accuracy(outputs: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of examples whose largest output is their label."""
    return float((outputs.argmax(dim=-1) == labels).double().mean())


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """The share of examples on which two sets of outputs predict the same class."""
    return float((a.argmax(dim=-1) == b.argmax(dim=-1)).double().mean())


def train_centred(
    ctx: Context,
    network: torch.nn.Module,
    digits: Digits,
    learning_rate: float,
    steps: int,
    records: int,
    key: str,
):
    """Full-batch gradient descent of the centred network g(x) = f(x) - f_0(x) on the digits' training images.

    g has f's NTK and starts from exactly zero, so it is compared with the closed form and kernel regression from
    f_0 = 0 instead of a random start whose O(1) outputs swamp the centred one-hot targets for most of the run.
    Training g on y is training f on y + f_0(X) (the loss is the same), which costs no second forward pass.
    Returns the run and g's test outputs at its recorded steps; a divergence is the config error of ``key``.
    """
    from ...dynamics.training import train

    with torch.no_grad():
        start_train, start_test = network(digits.x_train), network(digits.x_test)
    try:
        result = train(
            network,
            digits.x_train,
            digits.y_train + start_train,
            learning_rate=learning_rate,
            steps=steps,
            reduction="mean",
            x_test=digits.x_test,
            record_every=max(1, steps // records),
            progress=ctx.progress,
        )
    except ValueError as err:  # the digits are well-formed: what train refuses here is divergence
        raise diverged(key, learning_rate, err) from None
    return result, result.test_outputs - start_test


def draw_outputs_against(ax, closed: torch.Tensor, network: torch.Tensor, xlabel: str, ylabel: str) -> None:
    """Every output of the network against its closed form's, with the diagonal where they would be equal."""
    closed_flat, network_flat = closed.reshape(-1).cpu(), network.reshape(-1).cpu()
    ax.plot(closed_flat, network_flat, ".", ms=2, alpha=0.5, color=COLORS[0])
    low = float(torch.minimum(closed_flat.min(), network_flat.min()))
    high = float(torch.maximum(closed_flat.max(), network_flat.max()))
    ax.plot([low, high], [low, high], color="grey", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
