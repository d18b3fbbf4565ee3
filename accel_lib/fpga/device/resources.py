"""What this host gives a process: the CPUs and memory its cgroup allows (Binder, a container, a Kubernetes pod), and
a lifetime tied to its parent's."""
from __future__ import annotations


def _cgroup_file(v1_controller, v1_name, v2_name):
    """The path of this process's cgroup file (v2 ``v2_name`` or v1 ``v1_controller/v1_name``), or None."""
    from pathlib import Path
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "" and Path(f"/sys/fs/cgroup{path}/{v2_name}").is_file():
            return Path(f"/sys/fs/cgroup{path}/{v2_name}")
        if v1_controller in controllers.split(","):
            for root in (f"/sys/fs/cgroup/{v1_controller}", f"/sys/fs/cgroup/{controllers}"):
                if Path(f"{root}{path}/{v1_name}").is_file():
                    return Path(f"{root}{path}/{v1_name}")
    return None


def die_with_parent():
    """Ask the kernel to kill this process (SIGKILL) when the process that started it ends (Linux's
    PR_SET_PDEATHSIG), so that no helper outlives its owner, even one killed without warning; exit at once if that
    already happened. Elsewhere it does nothing."""
    import ctypes
    import os
    import signal
    import sys
    parent = os.getppid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)      # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        sys.exit(1)


def cpus() -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup CPU quota (as Kubernetes and Binder set
    one; ``os.cpu_count()`` shows the whole machine)."""
    import math
    import os
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    v2 = _cgroup_file("cpu", "cpu.cfs_quota_us", "cpu.max")
    try:
        if v2 is not None and v2.name == "cpu.max":
            quota, period = v2.read_text().split()[:2]
            if quota != "max":
                n = min(n, math.ceil(int(quota) / int(period)))
        elif v2 is not None:
            quota = int(v2.read_text())
            period = int((v2.parent / "cpu.cfs_period_us").read_text())
            if quota > 0:
                n = min(n, math.ceil(quota / period))
    except (OSError, ValueError):
        pass
    return max(1, n)


def memory_limit():
    """Bytes of memory this process's cgroup may use (Binder, a container, a Kubernetes pod), or None if unlimited."""
    f = _cgroup_file("memory", "memory.limit_in_bytes", "memory.max")
    try:
        value = f.read_text().strip() if f is not None else "max"
    except OSError:
        return None
    if value == "max" or int(value) >= 1 << 60:          # v1 writes "unlimited" as a huge number
        return None
    return int(value)
