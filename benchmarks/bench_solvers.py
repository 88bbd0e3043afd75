"""Kernel regression solvers: time, accuracy against the dense route, and peak memory.

For an NTK of mlp(2, 512, b_std=0.1) on n standard-normal inputs in 8 dimensions with 1 output, diag_reg:
  dense      torch.linalg.solve on the dense kernel (the reference; only while it fits)
  cholesky   ntkit.linalg.solve(method="cholesky")
  auto       ntkit.linalg.solve(method="auto") (prints the route it chose and the residual reached)
  cg         preconditioned CG on an ArchKernel operator (blocks cached while they fit, else recomputed)
  nystrom    FALKON-style Nystrom regression with --centers centres (memory O(n M))
  krr        scikit-learn KernelRidge(kernel="precomputed") on the same dense kernel
  gpytorch   linear_operator's preconditioned CG (GPyTorch's solver) on the same dense kernel, tol 1e-8
Printed: seconds (kernel + solve), the relative error of the test predictions against the dense route, and
the process's peak resident memory after each route (ru_maxrss; routes run in order, so it only grows).
Without the dense route, errors are against the first route that runs, in the order listed above (0 on its line).

Run:  python3 benchmarks/bench_solvers.py [--n 4000] [--centers 1000] [--only cg,nystrom] [--diag-reg 1e-4]
Large n without the dense reference: --only cg  or  --only nystrom  (e.g. --n 100000 --centers 5000).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

import ntkit
from ntkit import linalg


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--centers", type=int, default=1000)
    parser.add_argument("--diag-reg", type=float, default=1e-4)
    parser.add_argument("--only", default="dense,cholesky,cg,nystrom,krr")
    parser.add_argument("--memory-budget-mib", type=int, default=None, help="the operators' block budget")
    args = parser.parse_args()
    budget = None if args.memory_budget_mib is None else args.memory_budget_mib * 2**20
    routes = args.only.split(",")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, 8, generator=g, dtype=torch.float64)
    xt = torch.randn(args.test, 8, generator=g, dtype=torch.float64)
    y = torch.sin(x[:, :1] * 2) + 0.1 * torch.randn(args.n, 1, generator=g, dtype=torch.float64)
    arch = ntkit.mlp(2, 512, b_std=0.1)
    print(f"n={args.n} test={args.test} diag_reg={args.diag_reg} threads={torch.get_num_threads()}")
    print(f"{'route':10s} {'seconds':>9s} {'rel. error':>11s} {'iters':>6s} {'peak GiB':>9s}")
    ref = None
    k = None

    def report(name: str, seconds: float, pred: torch.Tensor, iters: int = 0) -> None:
        # Without the dense route, the first route run is the reference (put an exact one first: cholesky, auto, cg).
        nonlocal ref
        if ref is None:
            ref = pred
        err = float(torch.linalg.norm(pred - ref) / torch.linalg.norm(ref))
        print(f"{name:10s} {seconds:9.2f} {err:11.2e} {iters:6d} {peak_gib():9.2f}", flush=True)

    def dense_kernel() -> tuple[torch.Tensor, float]:
        """K(X, X) (the dense route's when it ran) and the shift diag_reg * mean diagonal."""
        kk = arch.kernel(x, get="ntk").ntk if k is None else k
        return kk, args.diag_reg * float(kk.diagonal().mean())

    cross = arch.kernel(xt, x, get="ntk").ntk
    print(f"  the test kernel K(x_test, X) computed; peak so far {peak_gib():.2f} GiB", flush=True)
    if "dense" in routes:
        start = time.perf_counter()
        k, shift = dense_kernel()
        print(
            f"  K(X, X) took {time.perf_counter() - start:.2f} s (krr and gpytorch reuse it: add it to theirs)"
        )
        ref = cross @ torch.linalg.solve(k + shift * torch.eye(args.n, dtype=k.dtype), y)
        report("dense", time.perf_counter() - start, ref)
    for method in ("cholesky", "auto", "cg"):
        if method not in routes:
            continue
        start = time.perf_counter()
        op = linalg.ArchKernel(arch, x, memory_budget=budget)
        sol = linalg.solve(op, y, diag_reg=args.diag_reg, method=method, progress=method != "cholesky")
        name = f"auto:{sol.method}" if method == "auto" else method
        report(name, time.perf_counter() - start, sol.predict(cross), sol.iterations)
        if method == "auto" and sol.residual is not None:
            print(f"  auto chose {sol.method}; relative residual reached {sol.residual:.2e}", flush=True)
    if "nystrom" in routes:
        start = time.perf_counter()
        op = linalg.ArchKernel(arch, x, cache=False, memory_budget=budget)
        sol = linalg.solve(
            op, y, diag_reg=args.diag_reg, method="nystrom", n_centers=args.centers, progress=True
        )
        report(f"nystrom{args.centers}", time.perf_counter() - start, sol.predict(cross), sol.iterations)
    if "krr" in routes:
        from sklearn.kernel_ridge import KernelRidge

        start = time.perf_counter()
        kk, shift = dense_kernel()
        krr = KernelRidge(alpha=shift, kernel="precomputed").fit(kk.numpy(), y.numpy())
        report("krr", time.perf_counter() - start, torch.from_numpy(krr.predict(cross.numpy())))
    if "gpytorch" in routes:
        # linear_operator's CG (what GPyTorch's exact GP uses above max_cholesky_size) on the same dense kernel,
        # asked for the same relative residual as ntkit's CG and with its pivoted-Cholesky preconditioner at
        # ntkit's rank; its default preconditioner has rank 15.
        import linear_operator
        from linear_operator import settings as lo

        start = time.perf_counter()
        kk, shift = dense_kernel()
        rank = min(args.n, max(100, int(2 * args.n**0.5)))
        with (
            lo.max_cholesky_size(0), lo.cg_tolerance(1e-8),
            lo.max_cg_iterations(2000), lo.max_preconditioner_size(rank), lo.min_preconditioning_size(0),
        ):  # fmt: skip
            op = linear_operator.to_linear_operator(kk).add_diagonal(torch.tensor(shift, dtype=kk.dtype))
            alpha = op.solve(y)
        report("gpytorch", time.perf_counter() - start, cross @ alpha)


if __name__ == "__main__":
    main()
