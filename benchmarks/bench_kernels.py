"""Infinite-width NNGP + NTK of a ReLU MLP, K(X, X): ntkit against a plain eager recursion and neural-tangents.

All three run in one invocation on the same inputs and the same machine, and the table reports ratios, which are
what is comparable on a shared machine. neural-tangents runs in its own interpreter (built by
../shared/peers/setup_peers.sh; pass --peer-python, default /tmp/ntkit-peers/bin/python) and is skipped if absent.

    python benchmarks/bench_kernels.py                 # the issue's target: depth 4, n = 8000, d = 100, float64
    python benchmarks/bench_kernels.py --n 2000 --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import ntkit
from ntkit.layers import ReLU


def eager_recursion(x: torch.Tensor, depth: int, b_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook recursion on whole matrices, written the obvious way: the baseline to beat."""
    s = x @ x.T / x.shape[1]
    t = torch.zeros_like(s)
    for layer in range(depth + 1):
        s = s + b_std**2
        t = t + s
        if layer == depth:
            break
        diag = torch.sqrt(torch.diagonal(s))
        norms = diag[:, None] * diag[None, :]
        rho = torch.clamp(s / norms, -1.0, 1.0)
        theta = torch.arccos(rho)
        s = norms * (torch.sin(theta) + (math.pi - theta) * torch.cos(theta)) / (2 * math.pi)
        t = t * (math.pi - theta) / (2 * math.pi)
    return s, t


def best_of(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8000)
    parser.add_argument("--d", type=int, default=100)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--eager-n", type=int, default=4000, help="n for the eager baseline (its memory grows fast)"
    )
    parser.add_argument("--peer-python", default="/tmp/ntkit-peers/bin/python")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    x = torch.randn(args.n, args.d, generator=torch.Generator().manual_seed(0), dtype=dtype).to(args.device)
    arch = ntkit.mlp(args.depth, 512, activation=ReLU(), b_std=0.1)
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)

    def ntkit_kernel():
        k = arch.kernel(x, progress=False)
        sync()
        return k

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {x.device}")
    print(
        f"ReLU MLP depth {args.depth}, b_std 0.1, n = {args.n}, d = {args.d}, {args.dtype}, K(X, X) NNGP + NTK\n"
    )
    ntkit_kernel()  # warm-up
    t_ntkit, k = best_of(ntkit_kernel, args.repeats)
    rows = [("ntkit", args.n, t_ntkit)]

    xe = x[: args.eager_n]

    def eager_kernel():
        out = eager_recursion(xe, args.depth, 0.1)
        sync()
        return out

    eager_kernel()  # warm-up, as for ntkit
    t_eager, (_, t_e) = best_of(eager_kernel, args.repeats)
    rows.append(("plain eager recursion", args.eager_n, t_eager))
    agree = _differences(k.ntk[: args.eager_n, : args.eager_n].cpu(), t_e.cpu())

    peer_agree = None
    if Path(args.peer_python).exists():
        with tempfile.TemporaryDirectory() as tmp:
            np.save(f"{tmp}/x.npy", x.cpu().numpy())
            script = Path(__file__).parent / "peers" / "nt_kernels.py"
            cmd = [
                args.peer_python,
                str(script),
                str(args.n),
                str(args.d),
                str(args.depth),
                args.dtype,
                str(args.repeats),
                f"{tmp}/x.npy",
                f"{tmp}/ntk.npy",
            ]
            env = dict(os.environ, JAX_PLATFORMS="cpu")
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if done.returncode == 0:
                rows.append(
                    (
                        "neural-tangents 0.6.5 (jit)",
                        args.n,
                        json.loads(done.stdout.strip().splitlines()[-1])["seconds"],
                    )
                )
                peer = torch.from_numpy(np.load(f"{tmp}/ntk.npy"))
                ours = k.ntk[:200, :200].cpu().to(peer.dtype)
                peer_agree = _differences(ours, peer)
            else:
                print("neural-tangents failed:\n" + done.stderr[-2000:])
    else:
        print(
            f"(neural-tangents skipped: {args.peer_python} not found; build it with ../shared/peers/setup_peers.sh)"
        )

    print(f"{'implementation':<30} {'n':>6} {'seconds':>9} {'s per 1e6 entries':>18} {'ntkit speed-up':>15}")
    ours_rate = t_ntkit / args.n**2
    for name, n, seconds in rows:
        rate = seconds / n**2
        print(f"{name:<30} {n:>6} {seconds:>9.3f} {rate * 1e6:>18.4f} {rate / ours_rate:>14.2f}x")
    print("\n(speed-up compares time per kernel entry, so rows with different n are comparable)")
    print("\nlargest relative difference of the NTK, off the diagonal / on the diagonal:")
    print(f"  ntkit vs eager:           {agree[0]:.1e} / {agree[1]:.1e}")
    if peer_agree is not None:
        print(f"  ntkit vs neural-tangents: {peer_agree[0]:.1e} / {peer_agree[1]:.1e}  (200 x 200 corner)")
    print(
        "On the diagonal the others take arccos of a rounded ratio S12 / sqrt(S11 S22) = 1 - O(eps), so theta is\n"
        "~1e-8 instead of 0 and the NTK is off by ~1e-8 relative; ntkit uses theta = 0 exactly there (DESIGN.md)."
    )


def _differences(ours: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """Largest relative difference off the diagonal and on it."""
    scale = other.abs().max()
    gap = (ours.to(other.dtype) - other).abs() / scale
    on = gap.diagonal().max()
    off = gap.fill_diagonal_(0).max()
    return float(off), float(on)


if __name__ == "__main__":
    main()
