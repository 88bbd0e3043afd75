"""Peer side of the CNN benchmarks and reference checks: neural-tangents' analytic kernels of an architecture
given as JSON, timed.

Run with the peer environment (../shared/peers/setup_peers.sh), not with ntkit's:

    PEER/bin/python nt_stax.py SPEC.json X.npy OUT.npz [repeats] [x2.npy]

SPEC is a list of layers, each a list: ["conv", channels, kernel, stride, padding, w_std, b_std], ["dense",
width, w_std, b_std], ["relu"], ["erf"], ["abs"], ["gap"], ["flatten"], ["avgpool", kernel, stride, padding],
["layernorm"], ["residual", SPEC]. `kernel` and `stride` are lists (one entry per spatial axis). X is
channels-first (n, C, *spatial) and transposed here to neural-tangents' channels-last layout. Prints one JSON
line with the best time; OUT holds nngp and ntk.
"""

import json
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402


def build(spec):
    layers = []
    for item in spec:
        kind, args = item[0], item[1:]
        if kind == "conv":
            channels, kernel, stride, padding, w_std, b_std = args
            layers.append(
                stax.Conv(channels, tuple(kernel), tuple(stride), padding.upper(), W_std=w_std, b_std=b_std)
            )
        elif kind == "dense":
            width, w_std, b_std = args
            layers.append(stax.Dense(width, W_std=w_std, b_std=b_std))
        elif kind == "relu":
            layers.append(stax.Relu())
        elif kind == "erf":
            layers.append(stax.Erf())
        elif kind == "abs":
            layers.append(stax.Abs())
        elif kind == "gap":
            layers.append(stax.GlobalAvgPool())
        elif kind == "flatten":
            layers.append(stax.Flatten())
        elif kind == "avgpool":
            kernel, stride, padding = args
            layers.append(stax.AvgPool(tuple(kernel), tuple(stride), padding.upper()))
        elif kind == "layernorm":
            layers.append(stax.LayerNorm(axis=-1))
        elif kind == "residual":
            layers.append(
                stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(), build(args[0])), stax.FanInSum())
            )
        else:
            raise ValueError(f"unknown layer {kind}")
    return stax.serial(*layers)


def main():
    spec = json.loads(open(sys.argv[1]).read())
    x = np.load(sys.argv[2])
    x = np.moveaxis(x, 1, -1) if x.ndim > 2 else x
    repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    x2 = None
    if len(sys.argv) > 5:
        x2 = np.load(sys.argv[5])
        x2 = np.moveaxis(x2, 1, -1) if x2.ndim > 2 else x2
    _, _, kernel_fn = build(spec)
    kernel_fn = jax.jit(kernel_fn, static_argnames="get")
    out = jax.block_until_ready(kernel_fn(x, x2, ("nngp", "ntk")))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(kernel_fn(x, x2, ("nngp", "ntk")))
        times.append(time.perf_counter() - start)
    np.savez(sys.argv[3], nngp=np.asarray(out[0]), ntk=np.asarray(out[1]))
    print(json.dumps({"seconds": min(times), "all": times}))


if __name__ == "__main__":
    main()
