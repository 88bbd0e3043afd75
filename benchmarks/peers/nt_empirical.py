"""neural-tangents' side of benchmarks/bench_empirical.py: time its fastest empirical NTK on the same
problems.

Run with the peer interpreter (/tmp/ntkit-peers/bin/python, built by shared/peers/setup_peers.sh), normally by
bench_empirical.py itself. Prints one JSON line: {"case": ..., "n": ..., "seconds": best of the timed calls,
"compile_seconds": the first call, which includes tracing and XLA compilation}.

The implementation is STRUCTURED_DERIVATIVES with vmap_axes=0 (Novak et al. 2022), the fastest one
neural-tangents offers for these models; the result is jitted and timed after a warm-up call, with
block_until_ready.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import neural_tangents as nt
from neural_tangents import stax


def mlp(width: int, depth: int, out: int):
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(width), stax.Relu()]
    return stax.serial(*layers, stax.Dense(out))


def cnn(out: int):
    # the same network as bench_empirical.small_cnn, in NHWC
    return stax.serial(
        stax.Conv(16, (3, 3), padding="SAME"),
        stax.Relu(),
        stax.AvgPool((2, 2), (2, 2)),
        stax.Conv(32, (3, 3), padding="SAME"),
        stax.Relu(),
        stax.AvgPool((2, 2), (2, 2)),
        stax.Flatten(),
        stax.Dense(out),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", choices=["mlp", "cnn"], required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--outputs", type=int, default=1)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--in-features", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    key = jax.random.PRNGKey(0)
    if args.case == "mlp":
        init_fn, apply_fn, _ = mlp(args.width, args.depth, args.outputs)
        shape = (args.n, args.in_features)
    else:
        init_fn, apply_fn, _ = cnn(args.outputs)
        shape = (args.n, 32, 32, 3)
    x = jax.random.normal(key, shape, dtype=jnp.float32)
    _, params = init_fn(key, (-1, *shape[1:]))
    kernel_fn = jax.jit(
        nt.empirical_ntk_fn(
            apply_fn,
            trace_axes=(),  # every output pair, (n, n, k, k), like outputs="full"
            vmap_axes=0,
            implementation=nt.NtkImplementation.STRUCTURED_DERIVATIVES,
        )
    )
    start = time.perf_counter()
    kernel_fn(x, None, params).block_until_ready()
    compile_seconds = time.perf_counter() - start
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        kernel_fn(x, None, params).block_until_ready()
        best = min(best, time.perf_counter() - start)
    print(json.dumps({"case": args.case, "n": args.n, "seconds": best, "compile_seconds": compile_seconds}))


if __name__ == "__main__":
    main()
