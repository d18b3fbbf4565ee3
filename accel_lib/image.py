"""Images: a build context (Dockerfile, pinned requirements, the accelerator package, the server) and its record.

Replicas start from the context alone: it carries a copy of the simulator's device and replica wings (``fpga/``,
``fpga.REPLICA_WINGS``), so a context copied elsewhere serves the same way.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from . import records
from .errors import UserError
from .fpga.cluster import containers
from .fpga.replica import server
from .model import Model
from .records import check_name

BUILD_LOG = "build.log"           # in the build context
BUILT = "built"                   # the build note's first word: a container image was built ...
SKIPPED = "container build skipped"   # ... or not, and why

SERVER_REQUIREMENTS = ("onnxruntime", "onnx", "numpy", "pillow", "grpcio", "grpcio-health-checking", "protobuf")
DOCKERFILE = """\
# Build context written by accel_lib for image {name}:{version}.
# The FPGA is simulated: the featurizer stage runs in ONNX Runtime with the device's numeric format.
# BASE: Docker Hub's python image, or a local Debian base (python -m accel_lib.fpga.cluster.containers base).
# The pinned requirements install from wheels/ when it holds them (PIP_ARGS=--no-index: no network), else from PyPI.
ARG BASE={hub_base}
FROM ${{BASE}}
ARG PIP_ARGS=
# a PATH of its own: a base imported from a tarball has none, and a runner need not supply one (podman kube play)
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR {app}
COPY requirements.txt .
COPY wheels/ wheels/
RUN python3 -m pip install --quiet ${{PIP_ARGS}} --find-links wheels -r requirements.txt && rm -rf wheels
COPY fpga/ fpga/
COPY package/ package/
RUN useradd --system --uid {uid} --create-home --home-dir {home} --shell /usr/sbin/nologin {user}
# a home of its own: ONNX Runtime warns at import, in every replica's log, where it cannot write there
ENV HOME={home}
USER {uid}
EXPOSE {port}
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


class Image(records.Attached):
    """A container image record. ``Image(ws, name, version=None)`` fetches one (latest by default)."""

    def __init__(self, workspace, name, version=None):
        with workspace.connect() as db:
            rec = (records.latest(db, records.ImageRecord, name) if version is None
                   else records.get(db, records.ImageRecord, name=name, version=int(version)))
        if rec is None:
            raise UserError(f"no image {name!r}" + (f" version {version}" if version else "")
                            + f" in workspace {workspace.name!r}; create it with Image.create(...).")
        self._attach(workspace, rec)

    RENAMED = {"container": "container_image"}   # the tag of the container image built from it (None: not built)

    def _derive(self, rec):
        self.context = self.workspace.layout.resolve(rec.context)
        self.build_note = ""        # what the last wait_for_creation did about a container build

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
                properties=dict(image_config.properties), creation_state=records.RUNNING, context=layout.relative(ctx),
                created_time=records.now()))
        bar = progress.bar(total=2, desc=f"image {name}:{version}")
        log_rel = layout.relative(ctx / BUILD_LOG)
        with workspace.pending("image", name=name, version=version, log=log_rel):   # a kill: Failed on next open
            try:
                _write_context(ctx, model, name, version)
                bar.update(1)
                _smoke_test(ctx)
                bar.update(1)
                state = records.SUCCEEDED
            except Exception as e:  # noqa: BLE001 - recorded on the image and in its build log
                with open(ctx / BUILD_LOG, "a") as log:
                    log.write(f"FAILED: {type(e).__name__}: {e}\n")
                state = records.FAILED
            finally:
                bar.close()
            with workspace.connect(immediate=True) as db:
                records.set_status(db, records.ImageRecord, {"name": name, "version": version}, state)
        return Image(workspace, name, version)

    def wait_for_creation(self, show_output=False, engine="auto"):
        """Build the context into a container image when a container engine answers (``engine``: "auto" finds
        podman or docker, or name one; None: do not build), the output streamed to the build log with progress;
        without an engine, say why the build is skipped (the context is complete either way). show_output prints
        the build log. Idempotent: an image built once is not built again."""
        if self.creation_state != records.SUCCEEDED:
            raise UserError(f"image {self.id} failed to build; see {self.image_build_log_uri}.")
        if engine is not None and not self.container_image:
            self._build(engine)
        if show_output:
            print((self.context / BUILD_LOG).read_text())

    @property
    def container_tag(self) -> str:
        """The tag a build gives the container image: the workspace registry's name (image_location), lowercase."""
        return self.image_location.lower()

    def _build(self, engine):
        from . import progress
        from .fpga.cluster import containers
        found, why = containers.find_engine(None if engine == "auto" else engine)
        log_path = self.context / BUILD_LOG

        def note(text):
            with open(log_path, "a") as log:
                log.write(text + "\n")
        if found is not None:
            check = progress.bar(total=1, desc=f"base image and a test container ({containers.engine_name(found)})",
                                 unit="check")           # a first run makes the Debian base here
            try:
                base, why = containers.ready(found, log=note)
                check.update(1)
            finally:
                check.close()
        if why:
            head = re.split(r" \(|; ", why, maxsplit=1)[0]       # the engine's own words and the fix: the log's
            self.build_note = (f"{SKIPPED}: {head}. The engine's message and the fix are in the image's build log "
                               "(image_build_log_uri). The build context is complete and replicas run as processes; "
                               "once the engine runs containers, call wait_for_creation() again.")
            note(f"{SKIPPED}: {why}")
            note(self.build_note)
            print(self.build_note)
            return
        bar = progress.bar(total=1, desc=f"building {self.container_tag} ({containers.engine_name(found)})",
                           unit="step")

        def step(n, of):
            bar.total = of
            bar.n = n
            bar.refresh()
        try:
            containers.wheelhouse(self.context / "requirements.txt", self.context / "wheels", log=note)
            containers.build(found, self.context, self.container_tag, base, log_path, on_step=step,
                             pip_args="--no-index")
        except (containers.EngineError, OSError) as e:
            raise UserError(f"the container build of image {self.id} failed: {e}\n(log: {self.image_build_log_uri})") \
                from None
        finally:
            bar.close()
        with self.workspace.connect(immediate=True) as db:
            rec = records.get(db, records.ImageRecord, name=self.name, version=self.version)
            rec.container = self.container_tag
            records.update(db, rec, "container")
        self.container_image = rec.container
        self.build_note = f"{BUILT} {self.container_tag} with {containers.engine_name(found)} (FROM {base})"
        note(self.build_note)
        print(self.build_note)

    @staticmethod
    def list(workspace, tags=None, model_name=None):
        """Images in the workspace, filtered by tags (keys or [key, value] pairs) and model name."""
        from .model import matches_query
        with workspace.connect() as db:
            recs = records.find(db, records.ImageRecord)
        return [Image.from_record(workspace, r) for r in recs
                if matches_query(r.tags, tags) and (model_name is None or r.model_name == model_name)]

    def delete(self):
        """Delete the image, its build context and the container image built from it; refused while a service runs
        it."""
        with self.workspace.connect(immediate=True) as db:
            users = [r.name for r in records.users_of(db, records.ImageRecord(name=self.name, version=self.version))]
            if users:
                raise UserError(f"image {self.id} is used by service {', '.join(users)}; delete the service first "
                                "(service.delete()).")
            rec = records.get(db, records.ImageRecord, name=self.name, version=self.version)
            records.delete(db, records.ImageRecord, name=self.name, version=self.version)
        shutil.rmtree(self.context, ignore_errors=True)
        if rec is not None and rec.container:
            from .fpga.cluster import containers
            engine, _ = containers.find_engine()
            if engine is not None:
                containers.remove_image(engine, rec.container)


def pinned_requirements(names) -> dict:
    """``names`` and everything they need, each at the version installed here (what the server runs with, and
    so what its image pins): {distribution name: version}, sorted."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    pins, todo = {}, list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in pins:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise UserError(f"{name} is not installed; reinstall accel_lib (make venv).") from None
        pins[name] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return dict(sorted(pins.items()))


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
    from . import fpga
    from .fpga.device import graph, manifest
    fpga_src = Path(fpga.__file__).parent
    (ctx / "fpga").mkdir()
    shutil.copy2(fpga_src / "__init__.py", ctx / "fpga")
    for wing in fpga.REPLICA_WINGS:
        shutil.copytree(fpga_src / wing, ctx / "fpga" / wing, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    log.write(f"  fpga/ (the simulator's {' and '.join(fpga.REPLICA_WINGS)} wings)\n")
    device_file = pkg / manifest.read(manifest.PackageManifest, pkg).device.file
    if graph.prepare(device_file):       # a replica then loads the fused graph by path: a faster start
        log.write(f"  package/{graph.fused_path(device_file).name} (the device graph with the fused quantizer)\n")
    reqs = [f"{name}=={version}" for name, version in pinned_requirements(SERVER_REQUIREMENTS).items()]
    (ctx / "requirements.txt").write_text("\n".join(reqs) + "\n")
    (ctx / "wheels").mkdir()
    (ctx / "wheels" / "README").write_text("The pinned wheels go here when the image is built offline "
                                           "(Image.wait_for_creation with a container engine).\n")
    cmd = server.command(containers.PYTHON, host="0.0.0.0", port=containers.PORT)   # TCP: Docker or Kubernetes
    (ctx / "Dockerfile").write_text(DOCKERFILE.format(
        name=name, version=version, cmd=json.dumps(cmd), app=containers.APP, uid=containers.CONTAINER_UID,
        user=containers.CONTAINER_USER, home=containers.CONTAINER_HOME, port=containers.PORT,
        hub_base=containers.HUB_BASE))
    log.write("  requirements.txt, Dockerfile\n")
    log.close()


def _smoke_test(ctx: Path):
    """Load the package from the context alone and score a generated image."""
    env = {**os.environ, "PYTHONPATH": str(ctx), "TF_CPP_MIN_LOG_LEVEL": "2"}
    r = subprocess.run(server.command(sys.executable, check=True), cwd=ctx, env=env, capture_output=True, text=True,
                       timeout=300)
    with open(ctx / BUILD_LOG, "a") as log:
        log.write(f"smoke test (python -m fpga.replica.server --check): exit {r.returncode} {r.stdout.strip()}\n")
        if r.returncode:
            log.write(r.stderr[-4000:])
    if r.returncode:
        raise RuntimeError("the context's server could not score a test image")
