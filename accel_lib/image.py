"""Images: a build context (Dockerfile, pinned requirements, the accelerator package, the server) and its record.

Replicas start from the context alone: it carries a copy of the simulator package (``fpga/``), so a context
copied elsewhere serves the same way.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from . import records
from .errors import UserError
from .fpga import server
from .model import Model, check_name

BUILD_LOG = "build.log"           # in the build context

SERVER_REQUIREMENTS = ("onnxruntime", "numpy", "pillow", "grpcio", "grpcio-health-checking", "protobuf")
DOCKERFILE = """\
# Build context written by accel_lib for image {name}:{version}.
# The FPGA is simulated: the featurizer stage runs in ONNX Runtime with the device's numeric format.
FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY fpga/ fpga/
COPY package/ package/
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin accel
USER 10001
EXPOSE 50051
CMD {cmd}
"""


def image_name(model_name) -> str:
    """The tutorial's name for the image of model ``model_name``: '<model_name>-image' (image names are lowercase)."""
    return f"{model_name}-image"


class ImageConfiguration:
    """What AccelContainerImage.image_configuration() returns: tags, properties, description."""

    def __init__(self, tags=None, properties=None, description=None):
        self.tags = dict(tags or {})
        self.properties = dict(properties or {})
        self.description = description


class AccelContainerImage:
    """Image configuration for models converted for the FPGA."""

    @staticmethod
    def image_configuration(tags=None, properties=None, description=None):
        """An image configuration (tags, properties, description)."""
        return ImageConfiguration(tags, properties, description)


class Image:
    """A container image record. ``Image(ws, name, version=None)`` fetches one (latest by default)."""

    def __init__(self, workspace, name, version=None):
        with workspace.connect() as db:
            rec = (records.latest(db, records.ImageRecord, name) if version is None
                   else records.get(db, records.ImageRecord, name=name, version=int(version)))
        if rec is None:
            raise UserError(f"no image {name!r}" + (f" version {version}" if version else "")
                            + f" in workspace {workspace.name!r}; create it with Image.create(...).")
        self._load(workspace, rec)

    def _load(self, workspace, rec: records.ImageRecord):
        self.workspace = workspace
        self.name, self.version = rec.name, rec.version
        self.model_name, self.model_version = rec.model_name, rec.model_version
        self.description = rec.description
        self.tags, self.properties = rec.tags, rec.properties
        self.creation_state = rec.creation_state
        self.created_time = rec.created_time
        self.context = workspace.layout.resolve(rec.context)

    @classmethod
    def from_record(cls, workspace, rec: records.ImageRecord) -> "Image":
        """The image of a record (no query)."""
        img = cls.__new__(cls)
        img._load(workspace, rec)
        return img

    @property
    def image_location(self):
        """Where the image would live in the workspace's registry."""
        return f"{self.workspace.name}.azurecr.local/{self.name}:{self.version}"

    @property
    def image_build_log_uri(self):
        """The build log, relative to the workspace."""
        return self.workspace.layout.relative(self.context / BUILD_LOG)

    id = property(lambda self: f"{self.name}:{self.version}")
    models = property(lambda self: [Model(self.workspace, self.model_name, self.model_version)])

    def __repr__(self):
        return f"Image(name={self.name!r}, version={self.version}, creation_state={self.creation_state!r})"

    @staticmethod
    def create(name, models, image_config, workspace):
        """Write the build context for one converted model, check that it serves, and record the image."""
        from . import progress
        check_name(name, "image")
        if not isinstance(models, (list, tuple)) or len(models) != 1:
            raise UserError(f"an FPGA image holds exactly one model (one model per FPGA); got "
                            f"{len(models) if isinstance(models, (list, tuple)) else models!r}. Create one image "
                            "per converted model.")
        model = models[0]
        if not isinstance(model, Model):
            raise UserError(f"{model!r} is not a registered model; convert one with "
                            "AccelOnnxConverter.convert_tf_model(...) and pass convert_request.result.")
        model.manifest               # UserError unless a converted model of this package format
        if not isinstance(image_config, ImageConfiguration):
            raise UserError("image_config must come from AccelContainerImage.image_configuration(...).")
        layout = workspace.layout
        with workspace.connect(immediate=True) as db:
            version = records.next_version(db, records.ImageRecord, name)
            ctx = layout.image_context(name, version)
            records.insert(db, records.ImageRecord(
                name=name, version=version, model_name=model.name, model_version=model.version,
                description=image_config.description, tags=dict(image_config.tags),
                properties=dict(image_config.properties), creation_state="Running", context=layout.relative(ctx),
                created_time=records.now()))
        bar = progress.bar(total=3, desc=f"image {name}:{version}")
        log_rel = layout.relative(ctx / BUILD_LOG)
        with workspace.pending("image", name=name, version=version, log=log_rel):   # a kill: Failed on next open
            try:
                _write_context(ctx, model, name, version)
                bar.update(1)
                _smoke_test(ctx)
                bar.update(1)
                engine = shutil.which("docker") or shutil.which("podman")
                if os.environ.get("ACCEL_LIB_DOCKER_BUILD") == "1" and engine:
                    _docker_build(engine, ctx, f"{name}:{version}")
                bar.update(1)
                state = "Succeeded"
            except Exception as e:  # noqa: BLE001 - recorded on the image and in its build log
                with open(ctx / BUILD_LOG, "a") as log:
                    log.write(f"FAILED: {type(e).__name__}: {e}\n")
                state = "Failed"
            finally:
                bar.close()
            with workspace.connect(immediate=True) as db:
                records.set_status(db, records.ImageRecord, {"name": name, "version": version}, state)
        return Image(workspace, name, version)

    def wait_for_creation(self, show_output=False):
        """Wait for the build (it is finished when create() returns); show_output prints the build log."""
        if show_output:
            print((self.context / BUILD_LOG).read_text())
        if self.creation_state != "Succeeded":
            raise UserError(f"image {self.id} failed to build; see {self.image_build_log_uri}.")
        return True

    @staticmethod
    def list(workspace, tags=None, model_name=None):
        """Images in the workspace, filtered by tags (keys or [key, value] pairs) and model name."""
        from .model import matches_query
        with workspace.connect() as db:
            recs = records.find(db, records.ImageRecord)
        return [Image.from_record(workspace, r) for r in recs
                if matches_query(r.tags, tags) and (model_name is None or r.model_name == model_name)]

    def delete(self):
        """Delete the image and its build context; refused while a service runs it."""
        with self.workspace.connect(immediate=True) as db:
            users = [r.name for r in records.users_of(db, records.ImageRecord(name=self.name, version=self.version))]
            if users:
                raise UserError(f"image {self.id} is used by service {', '.join(users)}; delete the service first "
                                "(service.delete()).")
            records.delete(db, records.ImageRecord, name=self.name, version=self.version)
        shutil.rmtree(self.context, ignore_errors=True)


def _write_context(ctx: Path, model: Model, name, version):
    if ctx.exists():
        shutil.rmtree(ctx)
    ctx.mkdir(parents=True)
    log = open(ctx / BUILD_LOG, "w")
    log.write(f"building {name}:{version} from {model.id}\n")
    pkg = ctx / "package"
    pkg.mkdir()
    for rel in model.files:
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_bytes(model.read_file(rel))
        log.write(f"  package/{rel}\n")
    fpga_src = Path(__file__).parent / "fpga"
    shutil.copytree(fpga_src, ctx / "fpga", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    log.write("  fpga/ (the simulator and server)\n")
    reqs = []
    for dist in SERVER_REQUIREMENTS:
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            raise UserError(f"{dist} is not installed; reinstall accel_lib (make venv).") from None
    (ctx / "requirements.txt").write_text("\n".join(reqs) + "\n")
    cmd = server.command("python", host="0.0.0.0", port=50051)      # TCP: in a container, Docker or Kubernetes
    (ctx / "Dockerfile").write_text(DOCKERFILE.format(name=name, version=version, cmd=json.dumps(cmd)))
    log.write("  requirements.txt, Dockerfile\n")
    log.close()


def _smoke_test(ctx: Path):
    """Load the package from the context alone and score a generated image."""
    env = {**os.environ, "PYTHONPATH": str(ctx), "TF_CPP_MIN_LOG_LEVEL": "2"}
    r = subprocess.run(server.command(sys.executable, check=True), cwd=ctx, env=env, capture_output=True, text=True,
                       timeout=300)
    with open(ctx / BUILD_LOG, "a") as log:
        log.write(f"smoke test (python -m fpga.server --check): exit {r.returncode} {r.stdout.strip()}\n")
        if r.returncode:
            log.write(r.stderr[-4000:])
    if r.returncode:
        raise RuntimeError("the context's server could not score a test image")


def _docker_build(engine, ctx: Path, tag):
    """Opt-in (ACCEL_LIB_DOCKER_BUILD=1): build the context with docker or podman."""
    r = subprocess.run([engine, "build", "-t", tag, str(ctx)], capture_output=True, text=True, timeout=3600)
    with open(ctx / BUILD_LOG, "a") as log:
        log.write(f"{Path(engine).name} build -t {tag}: exit {r.returncode}\n{r.stdout[-4000:]}{r.stderr[-4000:]}")
    if r.returncode:
        raise RuntimeError(f"{Path(engine).name} build failed")
