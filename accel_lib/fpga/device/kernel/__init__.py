"""The fused device quantizers: ``accel_lib.device::BfpQuantize`` and ``MxQuantize``, compiled ONNX Runtime custom
operators.

This module owns the operator's contract (domain, name, attributes), where the built library lives, and how it is
built: ``python -m accel_lib.fpga.device.kernel build`` compiles ``bfp_quantize.cc`` with the machine's C++ compiler
against ONNX Runtime's C/C++ API headers. ONNX Runtime's Python wheels ship no headers; the build takes the official
ones from a package registry (npm's ``com.github.asus4.onnxruntime``, which carries ONNX Runtime's release
framework with its ``Headers/``), downloaded once into ``build/ort-headers``. Without a compiler, npm or the
network, nothing is built and the device stage uses the pure-ONNX quantizer (the same numbers, slower).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

DOMAIN = "accel_lib.device"
OP = "BfpQuantize"
MX_OP = "MxQuantize"
SOURCE = Path(__file__).with_name("bfp_quantize.cc")
LIBRARY = Path(__file__).with_name("_build") / "libaccel_bfp.so"
HEADERS_PACKAGE = "com.github.asus4.onnxruntime@0.4.9"        # ONNX Runtime 1.29's headers (C API version 29)
HEADER_NAMES = ("onnxruntime_c_api.h", "onnxruntime_cxx_api.h", "onnxruntime_cxx_inline.h", "onnxruntime_float16.h",
                "onnxruntime_ep_c_api.h", "onnxruntime_experimental_c_api.h", "onnxruntime_experimental_cxx_api.h",
                "onnxruntime_error_code.h", "onnxruntime_run_options_config_keys.h",
                "onnxruntime_session_options_config_keys.h", "onnxruntime_env_config_keys.h",
                "onnxruntime_ep_device_ep_metadata_keys.h", "onnxruntime_lite_custom_op.h")
ENV = "ACCEL_LIB_DEVICE_KERNEL"      # "onnx" forces the pure-ONNX quantizer; "fused" requires the library
CXXFLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared", "-std=c++17",
            "-fvisibility=hidden", "-Wall"]


def make_node(x, y, axis, fmt, name):
    """The one fused node computing y = formats.quantize(x, fmt, axis) (a block floating-point or an MX format)."""
    from onnx import helper

    from .. import formats
    if isinstance(fmt, formats.MxFormat):
        e = fmt.element
        return helper.make_node(MX_OP, [x], [y], name=name, domain=DOMAIN, axis=int(axis), block=int(fmt.block),
                                exponent_bits=e.ebits, mantissa_bits=e.mbits, emin=e.emin, emax=e.emax,
                                max_norm=float(e.max_norm))
    return helper.make_node(OP, [x], [y], name=name, domain=DOMAIN, axis=int(axis), block=int(fmt.block),
                            mantissa_bits=int(fmt.mantissa_bits), emin=int(fmt.emin), emax=int(fmt.emax))


def mode():
    """'auto' (fused when built), 'fused' (required) or 'onnx' (never), from $ACCEL_LIB_DEVICE_KERNEL."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in ("auto", "fused", "onnx"):
        raise ValueError(f"{ENV}={value!r}: use auto, fused or onnx")
    return value


def available():
    """True when the compiled library is built."""
    return LIBRARY.is_file()


def use_fused(kernel=None):
    """Whether a device session should use the fused operator (``kernel``: 'auto', 'fused', 'onnx' or None for the
    environment's choice). 'fused' without a built library is an error that says how to build it."""
    kernel = kernel or mode()
    if kernel == "onnx":
        return False
    if available():
        return True
    if kernel == "fused":
        raise RuntimeError(f"the fused device quantizer is not built ({LIBRARY} is missing): run "
                           "`make kernel` (or `python -m accel_lib.fpga.device.kernel build`).")
    return False


def label(kernel=None):
    """'fused kernel' or 'ONNX ops': the quantizer a device session uses now (for logs and tables)."""
    return "fused kernel" if use_fused(kernel) else "ONNX ops"


def describe(kernel=None) -> str:
    """One sentence for a learner: which quantizer the device stage uses here, and why."""
    if use_fused(kernel):
        return "the fused quantizer (a compiled ONNX Runtime operator: one pass over memory)"
    if (kernel or mode()) == "onnx":
        return f"the pure-ONNX quantizer ({ENV}=onnx asks for it): the same values as the fused one, slower"
    return ("the pure-ONNX quantizer: the fused one is not built here (it needs g++, and npm once; `make kernel` "
            "builds it). Same values, slower")


def register(options):
    """Register the library with ONNX Runtime SessionOptions ``options``."""
    options.register_custom_ops_library(str(LIBRARY))
    return options


def _fetch_headers(dest, log):
    """ONNX Runtime's API headers from the npm registry into ``dest`` (skipped when already there)."""
    dest = Path(dest)
    if all((dest / n).is_file() for n in HEADER_NAMES):
        return dest
    npm = shutil.which("npm")
    if not npm:
        raise RuntimeError("npm is needed once to fetch ONNX Runtime's C/C++ API headers; install Node.js or put "
                           "the headers in " + str(dest))
    with tempfile.TemporaryDirectory(prefix="ort-headers-") as tmp:
        log(f"fetching ONNX Runtime's API headers ({HEADERS_PACKAGE}, about 150 MB, once) ...")
        subprocess.run([npm, "pack", HEADERS_PACKAGE, "--silent", "--pack-destination", tmp], check=True,
                       stdout=subprocess.DEVNULL)
        [tgz] = Path(tmp).glob("*.tgz")
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tgz) as tar:
            found = {}
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if "/Headers/" in member.name and name in HEADER_NAMES and name not in found and member.isfile():
                    found[name] = member
            missing = set(HEADER_NAMES) - set(found)
            if missing:
                raise RuntimeError(f"{HEADERS_PACKAGE} has no {sorted(missing)}")
            for name, member in found.items():
                (dest / name).write_bytes(tar.extractfile(member).read())
    return dest


def build(headers="build/ort-headers", log=print):
    """Compile the library (headers fetched if needed); returns its path."""
    inc = _fetch_headers(headers, log)
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise RuntimeError("no C++ compiler found (g++ or $CXX); install one to build the fused quantizer")
    LIBRARY.parent.mkdir(parents=True, exist_ok=True)
    tmp = LIBRARY.with_suffix(".tmp.so")
    subprocess.run([cxx, *CXXFLAGS, "-I", str(inc), str(SOURCE), "-o", str(tmp)], check=True)
    tmp.replace(LIBRARY)
    log(f"built {LIBRARY}")
    return LIBRARY


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python -m accel_lib.fpga.device.kernel", description=__doc__.split("\n")[0])
    p.add_argument("command", choices=["build", "status"])
    p.add_argument("--headers", default="build/ort-headers", help="where ONNX Runtime's headers are (or go)")
    p.add_argument("--optional", action="store_true",
                   help="a failed build is reported and leaves the pure-ONNX quantizer in use (exit 0)")
    args = p.parse_args(argv)
    if args.command == "status":
        print(f"{LIBRARY}: {'built' if available() else 'not built'}; {ENV}={mode()}")
        return 0
    try:
        build(args.headers)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        print(f"the fused device quantizer was not built: {e}", file=sys.stderr)
        if args.optional:
            print("the device stage will use the pure-ONNX quantizer (same results, slower)", file=sys.stderr)
            return 0
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
