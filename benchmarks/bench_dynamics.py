"""Training dynamics: speed of the closed form and of real training; agreement of finite networks with theory.

Sections (all by default; pick with --only):
  closed-form  predictions at 1000 times for n = 2000 training points with 10 outputs (plus 500 test points):
               ntkit's one-eigendecomposition route, side by side with a per-time matrix exponential and, when
               the peer environment exists, neural-tangents' gradient_descent_mse on the same problem.
  train        ntkit.dynamics.train on mlp(2, 2048) (n = 8 + 4 test points, 100 full-batch steps), with and
               without NTK tracking, and the same steps as a bare torch loop (the overhead ratio).
  width        relative RMSE between the trained network and gradient_descent_mse driven by the network's own
               f_0 and empirical NTK, and the relative NTK drift ||T_t - T_0||_F / ||T_0||_F, for widths
               256..4096, with the fitted log-log slopes.

Run:  python3 benchmarks/bench_dynamics.py [--only closed-form,train,width] [--seeds 3] [--steps 100]
Timings taken while other jobs share the machine are noisy; ratios within one run are what to compare.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from ntkit.analysis import fit_power_law
from ntkit.dynamics import train
from ntkit.empirical import empirical_ntk
from ntkit.layers import mlp
from ntkit.predict import gradient_descent_mse, max_learning_rate

PEER_PYTHON = "/tmp/ntkit-peers/bin/python"


def _best_of(fn, repeats=3):
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _closed_form_problem(n=2000, m=500, k=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + m, 20, generator=g, dtype=torch.float64)
    arch = mlp(2, 1)
    kernel = arch.kernel(x, get="ntk").ntk
    y = torch.randn(n, k, generator=g, dtype=torch.float64)
    return kernel[:n, :n].contiguous(), kernel[n:, :n].contiguous(), y


_PEER_SCRIPT = r"""
import sys, time, json
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import neural_tangents as nt
data = np.load(sys.argv[1])
k_tt, k_st, y, ts, lr = data["k_tt"], data["k_st"], data["y"], data["ts"], float(data["lr"])
def run():
    predict = nt.predict.gradient_descent_mse(jnp.asarray(k_tt), jnp.asarray(y), learning_rate=lr)
    zeros_test = jnp.zeros((k_st.shape[0], y.shape[1]))
    out = predict(jnp.asarray(ts), jnp.zeros_like(y), zeros_test, jnp.asarray(k_st))
    jax.block_until_ready(out)
    return out
run()
best = 1e9
for _ in range(3):
    t = time.perf_counter(); out = run(); best = min(best, time.perf_counter() - t)
print(json.dumps({"seconds": best, "test_last": np.asarray(out[1][-1]).tolist()}))
"""


def bench_closed_form(times_count: int = 1000) -> None:
    k_tt, k_st, y = _closed_form_problem()
    n, k = y.shape
    lr = 1.0
    times = torch.logspace(0, 6, times_count, dtype=torch.float64)
    zeros_test = torch.zeros(k_st.shape[0], k, dtype=torch.float64)

    def ntkit_route():
        predict = gradient_descent_mse(k_tt, y, learning_rate=lr)
        return predict(times, 0.0, zeros_test, k_st)

    ntkit_route()
    seconds = _best_of(ntkit_route)
    start = time.perf_counter()
    predict = gradient_descent_mse(k_tt, y, learning_rate=lr)
    eig_seconds = time.perf_counter() - start
    train_out, test_out = predict(times, 0.0, zeros_test, k_st)
    print(f"closed form, n={n}, k={k}, m={k_st.shape[0]}, {times_count} times (float64):")
    print(
        f"  ntkit gradient_descent_mse: {seconds:.2f} s total ({eig_seconds:.2f} s of it the one eigh); "
        f"output {tuple(train_out.shape)} + {tuple(test_out.shape)}"
    )

    # Naive route: a matrix exponential per time (what one writes without the cached eigenbasis), on 5 times.
    sample = times[:: times_count // 5][:5]

    def naive_route():
        solve = torch.linalg.solve(k_tt, y)
        outs = []
        for t in sample:
            decay = torch.linalg.matrix_exp(-lr * float(t) / y.numel() * k_tt)
            outs.append((y - decay @ y, k_st @ (solve - torch.linalg.solve(k_tt, decay @ y))))
        return outs

    naive = _best_of(naive_route, repeats=1) / len(sample) * times_count
    naive_check = naive_route()[-1][1]
    index = int(torch.nonzero(times == sample[-1])[0])
    agree = float((naive_check - test_out[index]).abs().max())
    print(
        f"  per-time matrix_exp + solve (extrapolated from {len(sample)} times): {naive:.1f} s "
        f"-> ntkit is {naive / seconds:.0f}x faster; max |difference| {agree:.1e}"
    )

    if os.path.exists(PEER_PYTHON):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "problem.npz")
            np.savez(path, k_tt=k_tt.numpy(), k_st=k_st.numpy(), y=y.numpy(), ts=times.numpy(), lr=lr)
            proc = subprocess.run([PEER_PYTHON, "-c", _PEER_SCRIPT, path], capture_output=True, text=True,
                                  timeout=600)  # fmt: skip
        if proc.returncode == 0:
            peer = json.loads(proc.stdout.strip().splitlines()[-1])
            diff = float((torch.tensor(peer["test_last"], dtype=torch.float64) - test_out[-1]).abs().max())
            print(
                f"  neural-tangents gradient_descent_mse (JAX, x64): {peer['seconds']:.2f} s "
                f"-> ratio ntkit/peer {seconds / peer['seconds']:.2f}; max |difference| at t_max {diff:.1e}"
            )
        else:
            print(f"  neural-tangents peer failed: {proc.stderr.strip().splitlines()[-1:]}")


def _width_data(n=8, m=4, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + m, d, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True) * math.sqrt(d)
    y = torch.sin(x[:n] @ torch.randn(d, generator=g, dtype=torch.float64))
    return x[:n], x[n:], y


def _ntk(model, x):
    return empirical_ntk(model, x, outputs="mean", progress=False)


def _train_timings(dtype: torch.dtype, steps: int) -> tuple[float, float, float]:
    """Seconds for ntkit.dynamics.train, for the same steps as a bare torch loop, and train with track_ntk."""
    x_train, x_test, y = _width_data()
    net = mlp(2, 2048).build(4, seed=0, dtype=dtype)
    lr = 0.5 * max_learning_rate(_ntk(net, x_train.to(dtype)).double(), y_train_size=x_train.shape[0])
    state = {k: v.clone() for k, v in net.state_dict().items()}

    def ours() -> None:
        net.load_state_dict(state)
        train(net, x_train, y, learning_rate=lr, steps=steps, x_test=x_test, record_every=10, progress=False)

    def bare() -> None:
        net.load_state_dict(state)
        opt = torch.optim.SGD(net.parameters(), lr=lr)
        xt, yt = x_train.to(dtype), y.to(dtype)
        for _ in range(steps):
            loss = 0.5 * ((net(xt)[:, 0] - yt) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    def tracked() -> None:
        net.load_state_dict(state)
        train(net, x_train, y, learning_rate=lr, steps=steps, record_every=steps, track_ntk=True, ntk_fn=_ntk,
              progress=False)  # fmt: skip

    return _best_of(ours, repeats=2), _best_of(bare, repeats=2), _best_of(tracked, repeats=1)


def bench_train(steps: int = 100) -> None:
    print(f"train on mlp(2, 2048), n=8 (+4 test), {steps} full-batch steps:")
    for dtype in (torch.float32, torch.float64):
        t_ours, t_bare, t_track = _train_timings(dtype, steps)
        ratio = t_ours / t_bare
        print(f"  {dtype!s:14s} train: {t_ours:.2f} s; bare torch loop {t_bare:.2f} s (ratio {ratio:.2f}); "
              f"with track_ntk at start and end: {t_track:.2f} s")  # fmt: skip


def bench_width(widths: list[int], seeds: int, steps: int) -> None:
    x_train, x_test, y = _width_data()
    n = x_train.shape[0]
    x_all = torch.cat([x_train, x_test])
    print(
        f"finite networks mlp(2, width) (ReLU, float64) vs the closed form, n={n} + {x_test.shape[0]} test, "
        f"{steps} GD steps at half the stable rate; mean over {seeds} seeds (min..max):"
    )
    rows = []
    for width in widths:
        rels, drifts, secs = [], [], []
        for seed in range(seeds):
            start = time.perf_counter()
            net = mlp(2, width).build(4, seed=seed, dtype=torch.float64)
            kernel = _ntk(net, x_all)
            with torch.no_grad():
                f0 = net(x_all)[:, 0]
            lr = 0.5 * max_learning_rate(kernel[:n, :n], y_train_size=n)
            result = train(net, x_train, y, learning_rate=lr, steps=steps, x_test=x_test, record_every=10,
                           progress=False)  # fmt: skip
            predict = gradient_descent_mse(kernel[:n, :n], y, learning_rate=lr, discrete=True)
            tr, te = predict(result.t.double(), f0[:n], f0[n:], kernel[n:, :n])
            trained = torch.cat([result.train_outputs, result.test_outputs], dim=1)
            predicted = torch.cat([tr, te], dim=1)
            rels.append(float((trained - predicted).norm() / predicted.norm()))
            final = _ntk(net, x_train)
            drifts.append(
                float(
                    torch.linalg.matrix_norm(final - kernel[:n, :n])
                    / torch.linalg.matrix_norm(kernel[:n, :n])
                )
            )
            secs.append(time.perf_counter() - start)
        rows.append((width, rels, drifts))
        print(f"  width {width:5d}: relative RMSE {np.mean(rels):.4f} ({min(rels):.4f}..{max(rels):.4f})   "
              f"drift {np.mean(drifts):.4f} ({min(drifts):.4f}..{max(drifts):.4f})   "
              f"{np.mean(secs):.1f} s/run", flush=True)  # fmt: skip
    slope_rmse, _ = fit_power_law([r[0] for r in rows], [float(np.mean(r[1])) for r in rows])
    slope_drift, _ = fit_power_law([r[0] for r in rows], [float(np.mean(r[2])) for r in rows])
    print(
        f"  fitted log-log slopes over widths {widths[0]}..{widths[-1]}: relative RMSE {slope_rmse:.2f}, "
        f"drift {slope_drift:.2f} (Lee et al. 2019 bound: -0.5)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="closed-form,train,width")
    parser.add_argument("--widths", default="256,512,1024,2048,4096")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, python {sys.version.split()[0]}")
    sections = args.only.split(",")
    if "closed-form" in sections:
        bench_closed_form()
    if "train" in sections:
        bench_train(args.steps)
    if "width" in sections:
        bench_width([int(w) for w in args.widths.split(",")], args.seeds, args.steps)


if __name__ == "__main__":
    main()
