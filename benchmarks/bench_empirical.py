"""Empirical NTK speed and memory: ntkit, the torch.func tutorial's recipes and neural-tangents, in one run.

Usage:  python3 benchmarks/bench_empirical.py [--threads 1] [--quick] [--cases mlp mlp10 cnn memory]

Cases (float32, x2=None, as in issue 3):
  mlp     100 -> 3 x 1024 (ReLU) -> 1, n = 500
  mlp10   the same with 10 outputs and outputs="full"
  cnn     Conv(16)-ReLU-AvgPool-Conv(32)-ReLU-AvgPool-Linear(10) on 3x32x32 inputs, n = 256, outputs="full"
  memory  peak resident memory of ntkit (auto) on the mlp at n = 1000, 2500, 5000, each in a fresh process

Baselines: my own implementations of the two recipes of the torch.func tutorial "Neural Tangent Kernels"
(Jacobian contraction: vmap(jacrev) per example, then einsum per parameter; NTK-vector products: vmap over
both inputs of vjp+jvp per pair of examples), and neural-tangents' fastest implementation
(STRUCTURED_DERIVATIVES, vmap_axes=0, jitted), run by benchmarks/peers/nt_empirical.py under
/tmp/ntkit-peers/bin/python when that interpreter exists. Where a baseline would take minutes or tens of GB at
full size it is timed on the first s examples and scaled by (n / s)**2, the growth of its pairwise work (this
slightly overstates the per-example Jacobian part, which grows like n); such rows say "scaled from n=s". Times
are the best of a few calls after a warm-up call; ratios are taken within this run, so they hold even on a
busy machine where absolute times do not.
"""

from __future__ import annotations

import os

# On a shared machine, OpenMP threads that spin while waiting for a busy core slow torch down by up to 8x
# (0.1 s took 0.85 s with 2 threads at a load of 4); passive waiting removes that. It must be set before torch
# loads its OpenMP runtime. XLA's thread pool (neural-tangents' side) does not spin.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from ntkit.empirical import empirical_ntk

PEER_PYTHON = Path("/tmp/ntkit-peers/bin/python")
PEER_SCRIPT = Path(__file__).resolve().parent / "peers" / "nt_empirical.py"


def mlp(out: int = 1, width: int = 1024, depth: int = 3, d: int = 100) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d if i == 0 else width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, out))


def small_cnn(out: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(32 * 8 * 8, out),
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------------------
# the torch.func tutorial's recipes, written out


def tutorial_jacobian_contraction(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Per-example Jacobians of every parameter by vmap(jacrev), then one einsum per parameter: (n1, n2, k,
    k)."""
    params = {name: p.detach() for name, p in model.named_parameters()}

    def single(p, x):
        return functional_call(model, p, (x.unsqueeze(0),)).squeeze(0)

    jac1 = vmap(jacrev(single), (None, 0))(params, x1)
    jac1 = [j.flatten(2) for j in jac1.values()]
    jac2 = vmap(jacrev(single), (None, 0))(params, x2)
    jac2 = [j.flatten(2) for j in jac2.values()]
    return torch.stack([torch.einsum("Naf,Mbf->NMab", a, b) for a, b in zip(jac1, jac2, strict=True)]).sum(0)


def tutorial_ntk_vector_products(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """vjp on x2, jvp on x1, vmapped over the output basis and over both inputs, example by example."""
    params = {name: p.detach() for name, p in model.named_parameters()}

    def single(p, x):
        return functional_call(model, p, (x.unsqueeze(0),)).squeeze(0)

    def pair(a, b):
        out, pullback = vjp(lambda p: single(p, b), params)

        def column(vec):
            return jvp(lambda p: single(p, a), (params,), pullback(vec))[1]

        basis = torch.eye(out.numel(), dtype=out.dtype, device=out.device).view(out.numel(), -1)
        return vmap(column)(basis)

    return vmap(vmap(pair, (None, 0)), (0, None))(x1, x2)


# ------------------------------------------------------------------------------------------------------------
# timing


def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: allocator, lazy imports, first-call dispatch
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def timed(
    fn: Callable[[torch.Tensor], object], x: torch.Tensor, subset: int | None, repeats: int
) -> tuple[float, str]:
    """Seconds for fn on all of x, or on x[:subset] scaled by (n / subset)**2; and a note saying which."""
    n = x.shape[0]
    if subset is None or subset >= n:
        return best_time(lambda: fn(x), repeats), ""
    xs = x[:subset]
    seconds = best_time(lambda: fn(xs), max(1, repeats // 2))
    return seconds * (n / subset) ** 2, f"scaled from n={subset}"


def peer(case: str, n: int, outputs: int, threads: int | None, repeats: int) -> tuple[float, str] | None:
    if not PEER_PYTHON.exists():
        return None
    env = dict(os.environ)
    if threads == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    command = [str(PEER_PYTHON), str(PEER_SCRIPT), "--case", case, "--n", str(n), "--outputs", str(outputs)]
    command += ["--repeats", str(repeats)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        print(f"  (neural-tangents failed: {result.stderr.strip().splitlines()[-1:]})")
        return None
    record = json.loads(result.stdout.strip().splitlines()[-1])
    return record["seconds"], f"jit compile {record['compile_seconds']:.1f} s not counted"


def table(title: str, rows: list[tuple[str, float, str]], reference: str) -> None:
    ref = dict((name, t) for name, t, _ in rows)[reference]
    print(f"\n{title}")
    print(f"  {'implementation':<44} {'seconds':>9}  {'/ ' + reference:>22}  note")
    for name, seconds, note in rows:
        print(f"  {name:<44} {seconds:9.3f}  {seconds / ref:22.2f}  {note}")


# ------------------------------------------------------------------------------------------------------------
# cases


def bench_mlp(outputs: int, mode: str, n: int, quick: bool, threads: int | None) -> None:
    torch.manual_seed(0)
    model = mlp(outputs)
    x = torch.randn(n, 100)
    repeats = 2 if quick else (10 if outputs == 1 else 3)
    rows = []
    for method in ("auto", "layerwise"):
        seconds, note = timed(
            lambda z, m=method: empirical_ntk(model, z, outputs=mode, method=m, progress=False),
            x,
            None,
            repeats,
        )
        rows.append((f"ntkit {method}", seconds, note))
    # one subset for every scaled row, so that ntkit's and the tutorial's Jacobian contractions compare like
    # for like (the tutorial holds the Jacobians of both inputs at once: 2 x n x k x 2.2M floats)
    sub = 8 if outputs > 1 else 100
    for method in ("jacobian", "ntk-vp"):
        seconds, note = timed(
            lambda z, m=method: empirical_ntk(model, z, outputs=mode, method=m, progress=False), x, sub, 1
        )
        rows.append((f"ntkit {method}", seconds, note))
    seconds, note = timed(lambda z: tutorial_jacobian_contraction(model, z, z), x, sub, 1)
    rows.append(("torch.func tutorial: Jacobian contraction", seconds, note))
    nt = peer("mlp", n, outputs, threads, repeats)
    if nt is not None:
        rows.append(("neural-tangents STRUCTURED_DERIVATIVES", *nt))
    title = f"MLP 100 -> 3 x 1024 -> {outputs}, n = {n}, float32, x2=None, outputs={mode!r}"
    table(title, rows, "ntkit auto")


def bench_cnn(n: int, quick: bool, threads: int | None) -> None:
    torch.manual_seed(0)
    model = small_cnn(10)
    x = torch.randn(n, 3, 32, 32)
    repeats = 2 if quick else 3
    rows = []
    for method in ("auto", "layerwise"):
        seconds, note = timed(
            lambda z, m=method: empirical_ntk(model, z, outputs="full", method=m, progress=False),
            x,
            None,
            repeats,
        )
        rows.append((f"ntkit {method}", seconds, note))
    for method in ("jacobian", "ntk-vp"):
        subset = None if method == "jacobian" else 32
        seconds, note = timed(
            lambda z, m=method: empirical_ntk(model, z, outputs="full", method=m, progress=False),
            x,
            subset,
            1,
        )
        rows.append((f"ntkit {method}", seconds, note))
    seconds, note = timed(lambda z: tutorial_jacobian_contraction(model, z, z), x, None, 1)
    rows.append(("torch.func tutorial: Jacobian contraction", seconds, note))
    seconds, note = timed(lambda z: tutorial_ntk_vector_products(model, z, z), x, 16, 1)
    rows.append(("torch.func tutorial: NTK-vector products", seconds, note))
    nt = peer("cnn", n, 10, threads, repeats)
    if nt is not None:
        rows.append(("neural-tangents STRUCTURED_DERIVATIVES", *nt))
    table(f"CNN on 3x32x32, 10 outputs, n = {n}, float32, x2=None, outputs='full'", rows, "ntkit auto")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(n: int) -> None:
    """Run in a fresh process: peak resident memory during one empirical_ntk call on the mlp.

    The peak is VmHWM of /proc/self/status, reset just before the call by writing 5 to /proc/self/clear_refs
    (getrusage's ru_maxrss would carry the parent's peak over the exec).
    """
    torch.manual_seed(0)
    model = mlp(1)
    x = torch.randn(n, 100)
    before = _status_kib("VmRSS") * 1024
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = time.perf_counter()
    kernel = empirical_ntk(model, x, progress=False)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM") * 1024
    params = sum(p.numel() for p in model.parameters())
    output = kernel.numel() * kernel.element_size()
    record = {"n": n, "before": before, "peak": peak, "seconds": seconds, "params": params, "output": output}
    print(json.dumps(record))


def bench_memory(sizes: list[int], threads: int | None) -> None:
    print(
        "\nPeak resident memory, ntkit auto on the MLP (1 output, float32, x2=None), one fresh process per n"
    )
    print(
        f"  {'n':>6} {'seconds':>8} {'peak MiB':>9} {'growth MiB':>11} {'output MiB':>11} "
        f"{'n x params x 4 B':>17}"
    )
    for n in sizes:
        command = [sys.executable, __file__, "--memory-child", str(n)]
        if threads:
            command += ["--threads", str(threads)]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        r = json.loads(result.stdout.strip().splitlines()[-1])
        mib = 2**20
        print(
            f"  {r['n']:>6} {r['seconds']:8.2f} {r['peak'] / mib:9.0f} "
            f"{(r['peak'] - r['before']) / mib:11.0f} {r['output'] / mib:11.0f} "
            f"{r['n'] * r['params'] * 4 / 2**30:14.1f} GiB"
        )
    print("  (growth = peak during the call minus the resident memory before it; it includes the output.")
    print("   The last column is what the per-example Jacobians of all n examples would take.)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", default=["mlp", "mlp10", "cnn", "memory"])
    parser.add_argument("--threads", type=int, default=None, help="torch (and XLA) threads; default: torch's")
    parser.add_argument("--quick", action="store_true", help="smaller n and fewer repeats, for a smoke test")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        memory_child(args.memory_child)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), peers: {PEER_PYTHON.exists()}")
    n = 100 if args.quick else 500
    if "mlp" in args.cases:
        bench_mlp(1, "mean", n, args.quick, args.threads)
    if "mlp10" in args.cases:
        bench_mlp(10, "full", n, args.quick, args.threads)
    if "cnn" in args.cases:
        bench_cnn(64 if args.quick else 256, args.quick, args.threads)
    if "memory" in args.cases:
        bench_memory([500, 1000] if args.quick else [1000, 2500, 5000], args.threads)


if __name__ == "__main__":
    main()
