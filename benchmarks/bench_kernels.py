"""Infinite-width NNGP + NTK, K(X, X): ntkit against neural-tangents (and a plain eager recursion for the MLP).

Everything runs in one invocation on the same inputs and the same machine, and the table reports ratios, which are
what is comparable on a shared machine. neural-tangents runs in its own interpreter (built by
../shared/peers/setup_peers.sh; pass --peer-python, default /tmp/ntkit-peers/bin/python) and is skipped if absent.

Two groups of cases, chosen with --cases (default: fc only, as before; --cnn is short for --cases cnn):

fc   ReLU MLP, depth 4, width 512, b_std 0.1, against neural-tangents and the textbook eager recursion.
cnn  issue 8's CNN, float64: 3 x [Conv(64, 3x3, "same", w_std 1, b_std 0), ReLU] on 8x8 one-channel images,
     then a readout: GlobalAvgPool + Dense(1) (full P x P spatial covariance, P = 64 positions) at
     --gap-n (default 100, 200), and Flatten + Dense(1) (spatial diagonal only) at --flatten-n (default 200,
     1000). ntkit runs twice per case, eagerly (NTKIT_COMPILE=0) and with its fused loops (NTKIT_COMPILE=1,
     layers/_fused.py: torch.compile'd loops for spatial kernels), each
     timed after a warm-up call that also compiles, whose time is printed (on a cold TorchInductor cache it
     is tens of seconds; later processes find the loops on disk). Each case prints ntkit's (--route, default
     fused) and neural-tangents' best time, their ratio, and their agreement (largest
     relative difference of NTK and NNGP, off the diagonal and on it). For every case it also prints what
     bounds ntkit: the asin floor, that is the arcsin ntkit's eager kernel maps call (numpy's SIMD loop where
     numpy has one for this CPU, else torch.asin; float64; the fused loops use SLEEF's, which on 2 threads
     runs about as fast as numpy's on one) timed here over one entry per spatial pair
     (P^2 for pooling, P for Flatten) per input pair per ReLU layer, for the n (n + 1) / 2 pairs a symmetric
     K(X, X) needs (ReLU's map takes one arcsin per entry), and ntkit's time as a multiple of that floor; and
     how many full passes over the same entries (read + write) ntkit's time would buy at the bandwidth of an
     in-place multiply over a tile-sized tensor (2^18 entries, the size of ntkit's spatial tiles).

    python benchmarks/bench_kernels.py                 # the issue's FC target: depth 4, n = 8000, d = 100
    python benchmarks/bench_kernels.py --n 2000 --eager-n 2000
    python benchmarks/bench_kernels.py --cnn           # the CNN cases (about 3 minutes, most of it the peer)
    python benchmarks/bench_kernels.py --cnn --gap-n 100 --flatten-n 1000
    python benchmarks/bench_kernels.py --cases fc,cnn  # both
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
from ntkit.layers import (
    Conv,
    Dense,
    Flatten,
    GlobalAvgPool,
    ReLU,
    Serial,
    _elementwise,  # the arcsin the kernel maps use, for the floor
)


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
    parser.add_argument(
        "--cases", default="fc", help="comma-separated groups to run: fc (the default), cnn, or fc,cnn"
    )
    parser.add_argument("--cnn", action="store_true", help="short for --cases cnn")
    parser.add_argument("--n", type=int, default=8000, help="fc: number of inputs")
    parser.add_argument("--d", type=int, default=100, help="fc: input dimension")
    parser.add_argument("--depth", type=int, default=4, help="fc: hidden layers")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64", help="fc: dtype")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--eager-n", type=int, default=4000, help="n for the eager baseline (its memory grows fast)"
    )
    parser.add_argument("--gap-n", default="100,200", help="cnn: n of the GlobalAvgPool cases ('' for none)")
    parser.add_argument("--flatten-n", default="200,1000", help="cnn: n of the Flatten cases ('' for none)")
    parser.add_argument(
        "--peer-repeats",
        type=int,
        default=1,
        help="cnn: timed neural-tangents calls after its compiling call (the pooled ones take minutes)",
    )
    parser.add_argument(
        "--route",
        choices=["fused", "eager"],
        default="fused",
        help="cnn: which of ntkit's two routes (both are timed) the ratios use: the fused loops "
        "(NTKIT_COMPILE=1; timed after the compiling call, as neural-tangents is) or eager",
    )
    parser.add_argument("--peer-python", default="/tmp/ntkit-peers/bin/python")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    cases = ["cnn"] if args.cnn else [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - {"fc", "cnn"})
    if unknown or not cases:
        parser.error(f"--cases takes fc, cnn or fc,cnn, got {args.cases!r}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print(f"load average at start: {_load()}\n")
    if "fc" in cases:
        run_fc(args)
    if "cnn" in cases:
        if "fc" in cases:
            print()
        run_cnn(args)
    print(f"\nload average at the end: {_load()}")


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def run_fc(args: argparse.Namespace) -> None:
    dtype = getattr(torch, args.dtype)
    x = torch.randn(args.n, args.d, generator=torch.Generator().manual_seed(0), dtype=dtype).to(args.device)
    arch = ntkit.mlp(args.depth, 512, activation=ReLU(), b_std=0.1)
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)

    def ntkit_kernel():
        k = arch.kernel(x, progress=False)
        sync()
        return k

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
        "~1e-8 instead of 0 and the NTK is off by ~1e-8 relative; ntkit uses theta = 0 exactly there\n"
        "(docs/architecture.md)."
    )


def _differences(ours: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """Largest relative difference off the diagonal and on it."""
    scale = other.abs().max()
    gap = (ours.to(other.dtype) - other).abs() / scale
    on = gap.diagonal().max()
    off = gap.fill_diagonal_(0).max()
    return float(off), float(on)


# --- the CNN cases (issue 8) ----------------------------------------------------------------------------------
_CNN_CHANNELS, _CNN_DEPTH, _CNN_SIDE = 64, 3, 8
_TILE_ENTRIES = 2**18  # ntkit's spatial tiles hold about this many entries per tensor (layers/kernel.py)


def cnn_arch(readout: str) -> Serial:
    """The issue's CNN: 3 x [Conv(64, 3x3, same, w_std 1, b_std 0), ReLU], then GlobalAvgPool or Flatten, Dense(1)."""
    body = []
    for _ in range(_CNN_DEPTH):
        body += [Conv(_CNN_CHANNELS, 3), ReLU()]
    return Serial(*body, GlobalAvgPool() if readout == "gap" else Flatten(), Dense(1))


def cnn_spec(readout: str) -> list:
    """The same architecture in benchmarks/peers/nt_stax.py's JSON spec."""
    spec: list = []
    for _ in range(_CNN_DEPTH):
        spec += [["conv", _CNN_CHANNELS, [3, 3], [1, 1], "same", 1.0, 0.0], ["relu"]]
    return [*spec, [readout], ["dense", 1, 1.0, 0.0]]


def _stream_seconds(fn, entries: int, repeats: int = 3) -> float:
    """Best time of `fn` called on tile-sized buffers often enough to cover `entries` entries (scaled)."""
    calls = max(16, math.ceil(entries / _TILE_ENTRIES))  # at least 16 calls, so small cases time something
    fn()  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - start)
    return best * entries / (calls * _TILE_ENTRIES)


def _floors(entries: int) -> tuple[float, float]:
    """(the kernel maps' arcsin over `entries` float64 entries, one read + write pass over as many) in seconds."""
    g = torch.Generator().manual_seed(1)
    rho = torch.rand(_TILE_ENTRIES, generator=g, dtype=torch.float64).mul_(2).sub_(1)
    out = torch.empty_like(rho)
    t_asin = _stream_seconds(lambda: _elementwise.asin(rho, out=out), entries)
    buf = torch.rand(_TILE_ENTRIES, generator=g, dtype=torch.float64).add_(1)
    t_pass = _stream_seconds(lambda: buf.mul_(1.0), entries)
    return t_asin, t_pass


def _run_peer(args: argparse.Namespace, readout: str, x: torch.Tensor) -> tuple[float, dict] | str:
    """(best seconds, {"nngp", "ntk"}) from neural-tangents, or why there is none."""
    if not Path(args.peer_python).exists():
        return f"{args.peer_python} not found; build it with ../shared/peers/setup_peers.sh"
    script = Path(__file__).parent / "peers" / "nt_stax.py"
    with tempfile.TemporaryDirectory() as tmp:
        Path(f"{tmp}/spec.json").write_text(json.dumps(cnn_spec(readout)))
        np.save(f"{tmp}/x.npy", x.numpy())
        cmd = [args.peer_python, str(script), f"{tmp}/spec.json", f"{tmp}/x.npy", f"{tmp}/out.npz"]
        cmd.append(str(args.peer_repeats))
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            return "failed:\n" + done.stderr[-2000:]
        seconds = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
        with np.load(f"{tmp}/out.npz") as out:
            return seconds, {name: torch.from_numpy(out[name]) for name in ("nngp", "ntk")}


def run_cnn(args: argparse.Namespace) -> None:
    def sizes(text: str) -> list[int]:
        return [int(v) for v in text.split(",") if v.strip()]

    cases = [("gap", n) for n in sizes(args.gap_n)] + [("flatten", n) for n in sizes(args.flatten_n)]
    n_max = max((n for _, n in cases), default=0)
    x_all = torch.randn(
        n_max, 1, _CNN_SIDE, _CNN_SIDE, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    positions = _CNN_SIDE * _CNN_SIDE
    print(
        f"CNN, float64: {_CNN_DEPTH} x [Conv({_CNN_CHANNELS}, 3x3, same, w_std 1, b_std 0), ReLU], "
        f"{_CNN_SIDE}x{_CNN_SIDE} one-channel images (P = {positions} positions), readout + Dense(1); "
        f"K(X, X) NNGP + NTK\n"
        f"ntkit: best of {args.repeats} after a warm-up, eagerly and with its fused loops (torch.compile); the "
        f"table uses the {args.route} route. neural-tangents 0.6.5 (jit): best of {args.peer_repeats} after its "
        "compiling call\n"
    )
    results = []
    for readout, n in cases:
        x = x_all[:n]
        arch = cnn_arch(readout)
        routes = {}
        for route, setting in (("eager", "0"), ("fused", "1")):
            os.environ["NTKIT_COMPILE"] = setting
            start = time.perf_counter()
            arch.kernel(x, progress=False)  # warm-up (the fused route compiles its loops here)
            first = time.perf_counter() - start
            t, k_route = best_of(lambda arch=arch, x=x: arch.kernel(x, progress=False), args.repeats)
            routes[route] = (t, first, k_route)
        os.environ.pop("NTKIT_COMPILE")
        t_ntkit, _, k = routes[args.route]
        t_eager, t_fused = routes["eager"][0], routes["fused"][0]
        fused_first, k_eager, k_fused = routes["fused"][1], routes["eager"][2], routes["fused"][2]
        print(
            f"  {readout} n = {n}: eager {t_eager:.3f} s, fused {t_fused:.3f} s (first call {fused_first:.1f} s, "
            f"compiling included), fused / eager agreement {_differences(k_fused.ntk, k_eager.ntk)[0]:.1e}",
            flush=True,
        )
        peer = _run_peer(args, readout, x)
        per_pair = positions**2 if readout == "gap" else positions
        entries = n * (n + 1) // 2 * per_pair * _CNN_DEPTH
        t_asin, t_pass = _floors(entries)
        results.append((readout, n, t_ntkit, k, peer, per_pair, entries, t_asin, t_pass, t_eager))
        peer_s = f"{peer[0]:.2f} s" if isinstance(peer, tuple) else "-"
        print(f"  done: {readout} n = {n}: ntkit {t_ntkit:.3f} s, neural-tangents {peer_s}", flush=True)

    print(
        f"\n{'case':<34} {'ntkit s':>9} {'n-t s':>9} {'n-t / ntkit':>12} {'eager s':>8}   "
        "agreement: NTK off / on diag, NNGP off / on"
    )
    for readout, n, t_ntkit, k, peer, *_, t_eager in results:
        name = f"{'GlobalAvgPool' if readout == 'gap' else 'Flatten'} + Dense(1), n = {n}"
        if isinstance(peer, tuple):
            t_peer, ref = peer
            ntk = _differences(k.ntk, ref["ntk"])
            nngp = _differences(k.nngp, ref["nngp"])
            print(
                f"{name:<34} {t_ntkit:>9.3f} {t_peer:>9.3f} {t_peer / t_ntkit:>11.1f}x {t_eager:>8.3f}   "
                f"{ntk[0]:.1e} / {ntk[1]:.1e}, {nngp[0]:.1e} / {nngp[1]:.1e}"
            )
        else:
            print(f"{name:<34} {t_ntkit:>9.3f} {'-':>9} {'-':>12} {t_eager:>8.3f}   neural-tangents {peer}")
    print(
        "(agreement: largest |ntkit - neural-tangents| / max |neural-tangents|. neural-tangents computes all n^2 "
        "pairs,\n ntkit the blocks on and above the diagonal. On the diagonal neural-tangents takes arccos of a "
        "rounded\n correlation 1 - O(eps), so its theta is ~1e-8 instead of 0; ntkit uses theta = 0 exactly "
        "there.)"
    )

    print(
        "\nWhat bounds ntkit: the asin floor is the kernel maps' arcsin (float64) timed here over one entry per "
        "spatial pair per\ninput pair per ReLU layer, n (n + 1) / 2 input pairs; a pass is one in-place multiply "
        f"(read + write) over as\nmany entries, in tile-sized ({_TILE_ENTRIES} entries) chunks.\n"
    )
    print(
        f"{'case':<34} {'entries':>9} {'asin s':>8} {'ntkit / asin':>13} {'GB/s':>7} {'pass s':>8} "
        f"{'ntkit = passes':>15} {'asin = passes':>14}"
    )
    for readout, n, t_ntkit, _, _, _, entries, t_asin, t_pass, _ in results:
        name = f"{'GlobalAvgPool' if readout == 'gap' else 'Flatten'}, n = {n} ({'P^2' if readout == 'gap' else 'P'})"
        bandwidth = 16 * entries / t_pass / 1e9
        print(
            f"{name:<34} {entries:>9.2e} {t_asin:>8.3f} {t_ntkit / t_asin:>12.1f}x {bandwidth:>7.1f} "
            f"{t_pass:>8.3f} {t_ntkit / t_pass:>15.0f} {t_asin / t_pass:>14.1f}"
        )
    print(
        "(ntkit = passes: ntkit's time as that many full passes over the ReLU layers' state at the measured "
        "bandwidth;\n asin = passes: the same for the asin floor alone)"
    )


if __name__ == "__main__":
    main()
