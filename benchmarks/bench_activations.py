"""Micro-benchmark of the activations' kernel maps on one tile, against a straightforward eager formulation.

Run: python3 benchmarks/bench_activations.py [--size 1024] [--dtype float64] [--repeats 20] [--threads N]

Prints, for each activation, the median time of `kernel_map(s12, s11, s22, need_dot=True)` on a (size, size)
tile, the same for a plain textbook implementation (theta = arccos(S12 / sqrt(S11 S22)), new tensors per
step),
and their ratio, all measured in this one run. The closed forms are in the hot path of the NTK recursion.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from ntkit.layers.activations import GELU, Erf, ReLU, Tanh


def _plain_relu(s12, s11, s22):
    norm = torch.sqrt(s11 * s22)
    cos = torch.clamp(s12 / norm, -1.0, 1.0)
    theta = torch.acos(cos)
    value = (norm * torch.sin(theta) + (math.pi - theta) * s12) / (2.0 * math.pi)
    dot = (math.pi - theta) / (2.0 * math.pi)
    return value, dot


def _plain_erf(s12, s11, s22):
    q = (1.0 + 2.0 * s11) * (1.0 + 2.0 * s22)
    value = (2.0 / math.pi) * torch.asin(torch.clamp(2.0 * s12 / torch.sqrt(q), -1.0, 1.0))
    dot = (4.0 / math.pi) / torch.sqrt(q - 4.0 * s12 * s12)
    return value, dot


def _inputs(size: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(size, 64, generator=generator, dtype=dtype)
    s = x @ x.T / 64
    diag = s.diagonal().clone()
    return s, diag[:, None], diag[None, :]


def _median_time(fn, s12, s11, s22, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        work = s12.clone()  # kernel_map may overwrite s12; the copy is outside the timed region
        start = time.perf_counter()
        fn(work, s11, s22)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    s12, s11, s22 = _inputs(args.size, dtype)
    print(
        f"tile {args.size}x{args.size} {args.dtype}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats}"
    )
    print(f"{'activation':<10} {'ntkit ms':>10} {'plain ms':>10} {'plain/ntkit':>12} {'ns/entry':>9}")
    cases = [("ReLU", ReLU(), _plain_relu), ("Erf", Erf(), _plain_erf), ("GELU", GELU(), None)]
    for name, act, plain in cases:
        ours = _median_time(
            lambda a, b, c, act=act: act.kernel_map(a, b, c, need_dot=True), s12, s11, s22, args.repeats
        )
        line = f"{name:<10} {ours * 1e3:10.2f}"
        if plain is not None:
            ref = _median_time(plain, s12, s11, s22, args.repeats)
            line += f" {ref * 1e3:10.2f} {ref / ours:12.2f}"
        else:
            line += f" {'-':>10} {'-':>12}"
        print(line + f" {ours / s12.numel() * 1e9:9.2f}")
    # Quadrature on a smaller tile: its cost is 2 order^2 evaluations per entry.
    small = 64
    tanh = Tanh()
    t = _median_time(
        lambda a, b, c: tanh.kernel_map(a, b, c), s12[:small, :small], s11[:small], s22[:, :small], 3
    )
    print(
        f"{'Tanh':<10} {t * 1e3:10.2f} ms on a {small}x{small} tile (order {tanh.order}), "
        f"{t / small**2 * 1e6:.1f} us/entry"
    )


if __name__ == "__main__":
    main()
