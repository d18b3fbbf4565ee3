"""The machine a benchmark ran on, named the same way in every table: CPU model, cores, ONNX Runtime."""
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


def describe() -> str:
    """'<CPU>, <n> cores, ONNX Runtime <version>'."""
    import onnxruntime as ort
    return f"{cpu_name()}, {os.cpu_count()} cores, ONNX Runtime {ort.__version__}"
