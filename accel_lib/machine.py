"""The machine a run was measured on, named the same way in every table: CPU model, cores, memory."""
import os
import platform


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> int:
    """Memory this process may use: the machine's, capped by its cgroup's limit."""
    from .fpga.device import resources
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = resources.memory_limit()
    return min(total, limit) if limit else total


def facts() -> dict:
    """{"cpu", "cores" (those this process may use), "memory_gib"}."""
    from .fpga.device import resources
    return {"cpu": cpu_name(), "cores": resources.cpus(), "memory_gib": round(memory_bytes() / 2**30, 1)}


def describe(runtime=True) -> str:
    """'<CPU>, <n> cores, <m> GiB' and, with ``runtime``, ', ONNX Runtime <version>'."""
    f = facts()
    text = f"{f['cpu']}, {f['cores']} cores, {f['memory_gib']:g} GiB"
    if runtime:
        import onnxruntime as ort
        text += f", ONNX Runtime {ort.__version__}"
    return text
