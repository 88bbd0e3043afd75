"""State the report sections share: data, architecture, kernels and training runs, computed on demand."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .._loss import squared_loss
from ..layers import GELU, Abs, Erf, Identity, ReLU, Serial, Sigmoid, Softplus, Tanh, mlp
from .config import ConfigError
from .data import Dataset, load_dataset

__all__ = ["Context", "TrainingRecord", "activation", "diverged", "learning_rate_for"]

_PER_OCTAVE = 16  # records per doubling of the step count


@dataclass(frozen=True)
class TrainingRecord:
    """A training run recorded at ``steps`` (R,): outputs on the training (R, n, k) and evaluation points
    (R, m, k), and the training loss (R,)."""

    steps: torch.Tensor
    train_outputs: torch.Tensor
    test_outputs: torch.Tensor
    loss: torch.Tensor


def _disabled(progress: bool | None) -> bool | None:
    return None if progress is None else not progress


_ACTIVATIONS = {
    "relu": ReLU,
    "abs": Abs,
    "erf": Erf,
    "tanh": Tanh,
    "sigmoid": Sigmoid,
    "gelu": GELU,
    "softplus": Softplus,
    "identity": Identity,
}

# "auto" learning rate: eta * lambda_max / N = AUTO_STEP on the analytic NTK, a quarter of the stability limit
# 2 N / lambda_max, so the finite network (whose kernel fluctuates and moves) stays well inside it.
AUTO_STEP = 0.5


# A run whose training loss ends this many times above where it started has diverged (gradient descent below
# the stability limit only lowers the loss of the linearized network; a wide network's stays within a few %).
_DIVERGED_GROWTH = 100.0


def activation(name: str) -> Any:
    """The ntkit activation for a config name (validated by the config already)."""
    return _ACTIVATIONS[name]()


def learning_rate_for(value: float | str, kernel: torch.Tensor, entries: int, key: str) -> float:
    """The learning rate of config key ``key``: "auto" gives eta lambda_max / N = AUTO_STEP on ``kernel``;
    a number is checked against the stability limit 2 N / lambda_max of discrete gradient descent
    (Lee et al. 2019, sec. 2.4), above which the closed form and the network's training both diverge.

    Raises:
        ConfigError: naming ``key`` when the rate is at or above the limit.
    """
    from ..predict import max_learning_rate

    limit = max_learning_rate(kernel, y_train_size=entries)
    if value == "auto":
        return AUTO_STEP / 2 * limit
    rate = float(value)
    if rate >= limit:
        raise ConfigError(
            f"config: '{key}' = {rate:g} is at or above {limit:.4g}, the largest stable rate 2 N / lambda_max "
            f"of gradient descent with this NTK (N = {entries}): training diverges there; use a smaller "
            f'rate, or "auto" ({AUTO_STEP / 2 * limit:.4g})'
        )
    return rate


def diverged(key: str, rate: float, err: Exception) -> ConfigError:
    """The one-line error for a training run at ``rate`` (config ``key``) that diverged below the limit."""
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return ConfigError(f"config: '{key}' = {rate:.4g}: {reason}")


class Context:
    """Everything the sections share. Properties compute on first use, so a resumed run only pays for what the
    sections still to run need."""

    def __init__(self, config: dict[str, Any], *, progress: bool | None = None) -> None:
        self.config = config
        self.seed: int = config["seed"]
        self.dtype = torch.float64 if config["dtype"] == "float64" else torch.float32
        self.device = torch.device(config["device"])
        self.progress = progress
        self.data: Dataset = load_dataset(config, self.device, self.dtype)

    # --- architecture -----------------------------------------------------------------------------------
    def arch(self, width: int | None = None, outputs: int | None = None, depth: int | None = None) -> Serial:
        model = self.config["model"]
        return mlp(
            model["depth"] if depth is None else depth,
            model["width"] if width is None else width,
            out=self.data.outputs if outputs is None else outputs,
            activation=activation(model["activation"]),
            w_std=model["w_std"],
            b_std=model["b_std"],
            parametrization=model["parametrization"],
        )

    def build(self, width: int | None = None, seed: int | None = None) -> torch.nn.Module:
        return self.arch(width).build(
            self.data.input_dim,
            seed=self.seed if seed is None else seed,
            dtype=self.dtype,
            device=self.device,
        )

    # --- evaluation points: the plotting grid (1-D inputs) followed by the test inputs -------------------
    @functools.cached_property
    def eval_inputs(self) -> torch.Tensor:
        parts = [self.data.x_test] if self.data.grid is None else [self.data.grid, self.data.x_test]
        return torch.cat(parts)

    @property
    def grid_slice(self) -> slice | None:
        return None if self.data.grid is None else slice(0, self.data.grid.shape[0])

    @property
    def test_slice(self) -> slice:
        start = 0 if self.data.grid is None else self.data.grid.shape[0]
        return slice(start, start + self.data.x_test.shape[0])

    # --- infinite-width kernels ---------------------------------------------------------------------------
    @functools.cached_property
    def kernel_train(self) -> torch.Tensor:
        """T_inf(X, X) on the training inputs, in float64 whatever the network's dtype: the closed form
        and the analyses invert it, and the NTK of a 1-D problem is too ill-conditioned for float32."""
        return self.arch().kernel(self.data.x_train.double(), get="ntk").ntk

    @functools.cached_property
    def kernel_eval_train(self) -> torch.Tensor:
        """T_inf(x, X) between the evaluation points and the training inputs."""
        return self.arch().kernel(self.eval_inputs.double(), self.data.x_train.double(), get="ntk").ntk

    @functools.cached_property
    def learning_rate(self) -> float:
        """training.learning_rate, "auto" resolved and a number checked against the stability limit."""
        return learning_rate_for(
            self.config["training"]["learning_rate"],
            self.kernel_train,
            self.data.y_train.numel(),
            "training.learning_rate",
        )

    @property
    def steps(self) -> int:
        return self.config["training"]["steps"]

    # --- training runs on the report's network (model.width, seed) ----------------------------------------
    @functools.cached_property
    def initial_network(self) -> torch.nn.Module:
        return self.build()

    def run(self, model: torch.nn.Module, y: torch.Tensor, *, description: str) -> TrainingRecord:
        """Train a copy of ``model`` on (x_train, y) with the report's settings, recording on a log-like grid.

        Training is chained in phases of doubling length, each recording ``_PER_OCTAVE`` times: every step at
        first, then every 2nd, 4th, ... step, so log-time figures see the fast early directions and the slow
        late ones at the cost of a few hundred records instead of one per step.
        """
        from ..dynamics.training import train

        network = copy.deepcopy(model)
        steps, done = self.steps, 0
        parts = []
        bar = tqdm(total=steps, desc=description, unit="step", leave=False, disable=_disabled(self.progress))
        with bar:
            while done < steps:
                every = max(1, done // _PER_OCTAVE)
                length = min(steps - done, max(_PER_OCTAVE, done))
                try:
                    result = train(
                        network,
                        self.data.x_train,
                        y,
                        learning_rate=self.learning_rate,
                        steps=length,
                        reduction="mean",
                        x_test=self.eval_inputs,
                        record_every=every,
                        progress=False,
                    )
                except ValueError as err:  # the inputs were checked: what train refuses here is divergence
                    raise diverged("training.learning_rate", self.learning_rate, err) from None
                first = 0 if not parts else 1  # each phase starts where the last one ended
                parts.append((result.t[first:] + done, result))
                done += length
                bar.update(length)
        record = TrainingRecord(
            steps=torch.cat([s for s, _ in parts]),
            train_outputs=torch.cat(
                [r.train_outputs[0 if i == 0 else 1 :] for i, (_, r) in enumerate(parts)]
            ),
            test_outputs=torch.cat([r.test_outputs[0 if i == 0 else 1 :] for i, (_, r) in enumerate(parts)]),
            loss=torch.cat([r.loss[0 if i == 0 else 1 :] for i, (_, r) in enumerate(parts)]),
        )
        start, end = float(record.loss[0]), float(record.loss[-1])
        if end > _DIVERGED_GROWTH * start:
            raise diverged(
                "training.learning_rate",
                self.learning_rate,
                ValueError(f"training ({description}) diverged: the loss grew from {start:.3g} to {end:.3g}"),
            )
        return record

    @functools.cached_property
    def real_run(self) -> TrainingRecord:
        """The finite network trained on the true labels."""
        return self.run(self.initial_network, self.data.y_train, description="network")

    @functools.cached_property
    def linear_run(self) -> TrainingRecord:
        """The network's linearization around its initial parameters, trained the same way.

        For full-batch gradient descent on squared loss the linearized network's outputs are exactly the
        closed form with the network's own NTK at initialisation, T_0 (Lee et al. 2019, eq. 9; the formulas
        of docs/architecture.md with discrete steps), so they are evaluated from it at the recorded steps
        instead of by a second, Jacobian-vector-product training run (4x the cost of the network's). With
        several outputs this uses the output-averaged T_0, whose cross-output terms vanish as the width grows.
        """
        from ..empirical import empirical_ntk
        from ..predict import gradient_descent_mse, max_learning_rate

        limit = max_learning_rate(self.empirical_kernel_train, y_train_size=self.data.y_train.numel())
        if self.learning_rate >= limit:
            raise ConfigError(
                f"config: 'training.learning_rate' = {self.learning_rate:.4g} is at or above {limit:.4g}, the "
                "largest stable rate 2 N / lambda_max for the network's own NTK at initialisation (width "
                f"{self.config['model']['width']}): its linearization diverges there; use a smaller rate"
            )
        network = copy.deepcopy(self.initial_network).double()
        k_eval_train = empirical_ntk(
            network, self.eval_inputs.double(), self.data.x_train.double(), outputs="mean"
        )
        predictor = gradient_descent_mse(
            self.empirical_kernel_train,
            self.data.y_train,
            learning_rate=self.learning_rate,
            reduction="mean",
            discrete=True,
        )
        f0_train, f0_eval = self.initial_outputs
        steps = self.real_run.steps
        train, test = predictor(
            steps.to(device=self.device, dtype=torch.float64), f0_train, f0_eval, k_eval_train
        )
        loss = squared_loss(train, self.data.y_train.double(), "mean")
        return TrainingRecord(steps=steps, train_outputs=train, test_outputs=test, loss=loss)

    @functools.cached_property
    def empirical_kernel_train(self) -> torch.Tensor:
        """The empirical NTK T_0(X, X) of the report network at initialisation, computed in float64."""
        from ..empirical import empirical_ntk

        network = copy.deepcopy(self.initial_network).double()
        return empirical_ntk(network, self.data.x_train.double(), outputs="mean")

    @functools.cached_property
    def initial_outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """f_0 on the training inputs and on the evaluation points."""
        with torch.no_grad():
            return self.initial_network(self.data.x_train), self.initial_network(self.eval_inputs)

    def closed_form(
        self,
        y: torch.Tensor,
        times: torch.Tensor,
        initial: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Closed-form outputs (train (T, n, k), eval (T, m, k)) of gradient descent with the analytic NTK
        from the initial outputs ``initial`` (default: the report network's) (Lee et al. 2019, eq. 9; discrete
        steps)."""
        from ..predict import gradient_descent_mse

        predictor = gradient_descent_mse(
            self.kernel_train, y, learning_rate=self.learning_rate, reduction="mean", discrete=True
        )
        f0_train, f0_eval = self.initial_outputs if initial is None else initial
        return predictor(times, f0_train, f0_eval, self.kernel_eval_train)

    @functools.cached_property
    def predicted(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Closed-form outputs on the true labels at the recorded steps of :attr:`real_run`."""
        return self.closed_form(
            self.data.y_train, self.real_run.steps.to(device=self.device, dtype=torch.float64)
        )

    @functools.cached_property
    def random_labels(self) -> torch.Tensor:
        """The training labels randomly permuted: same values and norm, no relation to the inputs left."""
        generator = torch.Generator().manual_seed(self.seed + 1)
        order = torch.randperm(self.data.y_train.shape[0], generator=generator).to(self.device)
        return self.data.y_train[order]
