"""The first-order Taylor expansion of a model in its parameters, as a trainable torch.nn.Module.

    f_lin(x; theta) = f(x; theta_0) + J(x) (theta - theta_0),   J(x) = df(x; theta)/dtheta at theta_0.

Lee et al. (2019, "Wide neural networks of any depth evolve as linear models under gradient descent") show
that a wide network trained by gradient descent stays close to this model, whose training under squared loss
is solved exactly by `gradient_descent_mse` with the empirical NTK T = J J^T at theta_0 (Jacot et al.
2018). The product J(x) (theta - theta_0) is one forward-mode pass (torch.func.jvp), so no Jacobian is ever
formed; gradients with respect to theta flow through it by ordinary autograd.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, jvp

# The same refusal of training-mode BatchNorm and Dropout as empirical_ntk's (one check, not a copy).
from ..empirical import check_modes

__all__ = ["LinearizedModel", "linearize"]


def _freeze_into_buffers(module: nn.Module) -> None:
    """Turn every parameter of `module` (recursively) into a buffer of the same name and value."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is None:
                continue
            del sub._parameters[name]
            sub.register_buffer(name, param.detach().clone())


class LinearizedModel(nn.Module):
    """f(x; theta_0) + J(x) (theta - theta_0) for a fixed expansion point theta_0 (see the module docstring).

    Parameters: `parameters()` are theta, a copy of the original model's parameters that starts at theta_0 and
    keeps their names under the prefix "module." (e.g. "module.0.weight") and their requires_grad flags: the
    frozen ones stay frozen and the trainable ones are what an optimizer moves. theta_0 is kept in buffers
    under "initial." (moved by .to() and saved in the state_dict, never trained). Training the original model
    and this one with the same optimizer therefore starts from the same point with the same gradients.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        names = [name for name, p in model.named_parameters() if p.requires_grad]
        if not names:
            raise ValueError(
                "model has no trainable parameters (requires_grad=True): there is nothing to linearize"
            )
        check_modes(model)
        self.module = copy.deepcopy(model)
        self.initial = copy.deepcopy(model)
        _freeze_into_buffers(self.initial)
        self._trainable_names = tuple(names)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        current = dict(self.module.named_parameters())
        initial = dict(self.initial.named_buffers())
        primal = {name: initial[name] for name in self._trainable_names}
        tangent = {name: current[name] - initial[name] for name in self._trainable_names}

        check_modes(self.initial)  # .train() on the linearized model reaches the copy at theta_0 too

        def at(params: dict[str, torch.Tensor]) -> torch.Tensor:
            out = functional_call(self.initial, params, args, kwargs)
            if not isinstance(out, torch.Tensor):
                keys = f" with keys {sorted(out)}" if isinstance(out, dict) else ""
                raise TypeError(
                    f"linearize: the model must return one tensor, but it returned a "
                    f"{type(out).__name__}{keys}; linearize a wrapper that returns the output you train, e.g. "
                    "a module whose forward is `return model(x)['logits']`"
                )
            return out

        out, change = jvp(at, (primal,), (tangent,))
        return out + change

    def extra_repr(self) -> str:
        count = sum(p.numel() for name, p in self.module.named_parameters() if name in self._trainable_names)
        return f"linearized in {count} trainable parameters"


def linearize(model: nn.Module) -> LinearizedModel:
    """The linearization of `model` at its current parameters theta_0, as a trainable module.

    Returns a `LinearizedModel` computing f(x; theta_0) + J(x) (theta - theta_0) by one forward-mode product
    (torch.func.jvp) per call, about the cost of two or three forward passes; its parameters are theta (see
    `LinearizedModel`). At theta = theta_0 it reproduces the model's outputs, and its empirical NTK is the
    model's NTK at theta_0 throughout training. The original model is not modified.
    """
    return LinearizedModel(model)
