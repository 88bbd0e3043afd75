"""Peer side of bench_kernels.py: neural-tangents' analytic NNGP + NTK of a ReLU MLP, K(X, X), timed.

Run with the peer environment (../shared/peers/setup_peers.sh), not with ntkit's. Prints one JSON line.
"""

import json
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

n, d, depth, dtype, repeats = (
    int(sys.argv[1]),
    int(sys.argv[2]),
    int(sys.argv[3]),
    sys.argv[4],
    int(sys.argv[5]),
)
layers = []
for _ in range(depth):
    layers += [stax.Dense(512, W_std=1.0, b_std=0.1), stax.Relu()]
layers.append(stax.Dense(1, W_std=1.0, b_std=0.1))
_, _, kernel_fn = stax.serial(*layers)
kernel_fn = jax.jit(kernel_fn, static_argnames="get")
x = np.asarray(np.load(sys.argv[6]), dtype=dtype)
out = kernel_fn(x, None, ("nngp", "ntk"))  # compile
jax.block_until_ready(out)
times = []
for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(kernel_fn(x, None, ("nngp", "ntk")))
    times.append(time.perf_counter() - start)
np.save(sys.argv[7], np.asarray(out[1][:200, :200]))
print(json.dumps({"seconds": min(times), "all": times}))
