"""Memory checks honour every limit that applies: MemAvailable, cgroup v2/v1 memory limits, RLIMIT_AS (issue 9, 4)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ntkit import tiling
from ntkit.empirical import empirical_ntk
from ntkit.layers import mlp

GiB = 2**30
MiB = 2**20


@pytest.fixture
def fake_system(tmp_path, monkeypatch):
    """A fake /proc/self, /proc/meminfo and /sys/fs/cgroup, with plenty of MemAvailable and no RLIMIT_AS."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "status").write_text("Name:\tpython\nVmSize:\t  1048576 kB\n")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal: {64 * 2**20} kB\nMemAvailable: {32 * 2**20} kB\n")
    root = tmp_path / "cgroup"
    root.mkdir()
    monkeypatch.setattr(tiling, "_PROC_SELF", proc)
    monkeypatch.setattr(tiling, "_PROC_MEMINFO", meminfo)
    monkeypatch.setattr(tiling, "_CGROUP_ROOT", root)
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    return proc, root


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_meminfo_alone(fake_system):
    proc, _ = fake_system
    _write(proc / "cgroup", "0::/\n")
    assert tiling.available_memory(torch.device("cpu")) == 32 * GiB


def test_cgroup_v2_limit_of_the_group_and_of_its_parents(fake_system):
    proc, root = fake_system
    _write(proc / "cgroup", "0::/job/step\n")
    _write(root / "job" / "step" / "memory.max", f"{2 * GiB}\n")
    _write(root / "job" / "step" / "memory.current", f"{600 * MiB}\n")
    _write(root / "job" / "step" / "memory.stat", f"anon 1\ninactive_file {100 * MiB}\nactive_file 5\n")
    _write(root / "job" / "memory.max", "max\n")
    assert tiling.available_memory(torch.device("cpu")) == 2 * GiB - 500 * MiB
    # a tighter limit above the group applies too
    _write(root / "job" / "memory.max", f"{GiB}\n")
    _write(root / "job" / "memory.current", f"{900 * MiB}\n")
    assert tiling.available_memory(torch.device("cpu")) == 124 * MiB


def test_cgroup_v1_limit(fake_system):
    proc, root = fake_system
    _write(proc / "cgroup", "5:devices:/\n4:memory:/docker/abc\n3:cpu,cpuacct:/\n")
    group = root / "memory" / "docker" / "abc"
    _write(group / "memory.limit_in_bytes", f"{3 * GiB}\n")
    _write(group / "memory.usage_in_bytes", f"{GiB}\n")
    _write(group / "memory.stat", f"cache 10\ntotal_inactive_file {GiB // 2}\n")
    _write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")  # v1's "unlimited"
    assert tiling.available_memory(torch.device("cpu")) == 3 * GiB - GiB // 2


def test_rlimit_as(fake_system, monkeypatch):
    proc, _ = fake_system
    _write(proc / "cgroup", "0::/\n")
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda which: (3 * GiB, resource.RLIM_INFINITY))
    assert tiling.available_memory(torch.device("cpu")) == 3 * GiB - GiB  # VmSize is 1 GiB


def test_kernels_and_empirical_ntks_refuse_what_the_cgroup_cannot_hold(fake_system):
    # 32 GiB of MemAvailable, but a 2 MiB container: both routes go through the one check and refuse up front.
    proc, root = fake_system
    _write(proc / "cgroup", "0::/small\n")
    _write(root / "small" / "memory.max", f"{2 * MiB}\n")
    _write(root / "small" / "memory.current", "0\n")
    x = torch.randn(400, 3, dtype=torch.float64)  # two 400 x 400 float64 matrices: 2.4 MiB
    with pytest.raises(tiling.MemoryBudgetError, match=r"only 0\.00 GiB is free on cpu"):
        mlp(1, 8).kernel(x)
    model = torch.nn.Linear(3, 1).double()
    x = torch.randn(600, 3, dtype=torch.float64)  # one 600 x 600 float64 matrix: 2.7 MiB
    with pytest.raises(tiling.MemoryBudgetError, match="free on cpu"):
        empirical_ntk(model, x)
    # within the limit, both work
    small = torch.randn(20, 3, dtype=torch.float64)
    assert mlp(1, 8).kernel(small).ntk.shape == (20, 20)
    assert empirical_ntk(model, small).shape == (20, 20)


def test_the_real_system_gives_a_positive_number():
    free = tiling.available_memory(torch.device("cpu"))
    assert free is None or free > 0
