"""Regenerate the Python modules of this folder's .proto files with grpcio-tools
(``python -m accel_lib.fpga.replica.protos.build``; ``--out DIR`` writes them elsewhere).

The generated modules are committed, so replicas need no compiler; a test checks they match their sources. They
build their messages in the package's own descriptor pool (``POOL``). Run it in a process without TensorFlow:
grpcio-tools' compiler and TensorFlow's protobuf library do not share a process.
"""
from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = ("tensorflow.proto", "serving.proto", "inference.proto")


def generate(out_dir: Path) -> list[Path]:
    """Compile the .proto files into ``out_dir``; imports between them become package-relative."""
    from importlib import resources

    from grpc_tools import protoc
    include = str(resources.files("grpc_tools") / "_proto")
    args = ["protoc", f"-I{HERE}", f"-I{include}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
            *(str(HERE / s) for s in SOURCES)]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + ", ".join(SOURCES))
    made = []
    for p in sorted(Path(out_dir).glob("*_pb2*.py")):
        if p.name.endswith("_grpc.py") and "class " not in p.read_text():
            continue                  # a file without services needs no gRPC module
        made.append(p)            # 'import tensorflow_pb2 as x' -> 'from . import tensorflow_pb2 as x'
        text = re.sub(r"^import (\w+_pb2) as ", r"from . import \1 as ", p.read_text(), flags=re.M)
        if "_descriptor_pool.Default()" in text:        # the package's own pool (see __init__), not the default
            text = text.replace("_descriptor_pool.Default()", "_POOL").replace(
                "from google.protobuf.internal import builder as _builder\n",
                "from google.protobuf.internal import builder as _builder\n\nfrom . import POOL as _POOL\n", 1)
        p.write_text(text)
    return made


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE, help="where the modules go (default: beside the .proto files)")
    out = p.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for made in generate(Path(tmp)):
            (out / made.name).write_text(made.read_text())
            print("wrote", out / made.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
