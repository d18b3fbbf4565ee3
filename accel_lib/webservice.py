"""Web services, the Azure-shaped face: deploy, state, wait, keys, logs, the Kubernetes export, delete. A deployment
is declared in the cluster's spec; the cluster's process (``fpga.cluster.frontend``) runs the replicas, each a gRPC
server holding one FPGA, and routes calls to them.

A service outlives the kernel that deployed it; ``Webservice(ws, name)`` re-attaches from any process. Scheduling,
the records of a deployment, their translation into the cluster's spec and the reading of what the cluster reports
live in ``deployment``; supervision lives in ``fpga.cluster.supervisor``.
"""
from __future__ import annotations

import time
from pathlib import Path

from . import deployment, records
from .compute import ComputeTarget
from .errors import OperationTimeout, UserError
from .fpga.cluster import specs
from .fpga.replica.limits import ServiceLimits
from .fpga.device.manifest import ManifestError
from .image import Image
from .records import check_name

_LIMITS, _CFG = ServiceLimits(), specs.ServiceConfig()      # the defaults, spelled there only
AksServiceDeploymentConfiguration = specs.ServiceConfig     # what deploy_configuration() returns, typed


class AksWebservice:
    """The AKS web service type."""

    @staticmethod
    def deploy_configuration(autoscale_enabled=False, num_replicas=_CFG.num_replicas, auth_enabled=None,
                             flash_seconds=_CFG.flash_seconds,
                             max_message_mb=_LIMITS.max_message_mb, description=None, tags=None,
                             max_images=_LIMITS.max_images, max_pixels=_LIMITS.max_pixels,
                             max_request_mb=_LIMITS.max_request_mb, scoring_timeout_ms=_LIMITS.scoring_timeout_ms,
                             runtime=_CFG.runtime) -> specs.ServiceConfig:
        """A deployment configuration (validated at once). Keys (``auth_enabled``) are on by default on AKS, as in
        Azure ML, and off on an edge device. Limits per request: ``max_message_mb``, ``max_images`` and
        ``max_request_mb`` (what it may decode to); per image: ``max_pixels`` (checked before decoding); per call:
        ``scoring_timeout_ms`` (then DEADLINE_EXCEEDED, or HTTP 504).
        ``runtime="container"`` runs each replica in a container of the image (built by ``wait_for_creation`` with
        podman or docker), ``"process"`` as a local process; None (the default): in a container where the image was
        built into one and its engine answers, else as a process."""
        if autoscale_enabled:
            raise UserError("autoscale_enabled=True is not simulated: each replica holds one FPGA; set "
                            "num_replicas instead.")
        cfg = specs.ServiceConfig(
            num_replicas=num_replicas, auth_enabled=None if auth_enabled is None else bool(auth_enabled),
            flash_seconds=float(flash_seconds) if isinstance(flash_seconds, (int, float)) else flash_seconds,
            description=description, tags=dict(tags or {}), runtime=runtime,
            limits=ServiceLimits(max_message_mb=max_message_mb, max_images=max_images,
                                         max_pixels=max_pixels, max_request_mb=max_request_mb,
                                         scoring_timeout_ms=scoring_timeout_ms))
        try:
            cfg.validate()
        except ManifestError as e:
            raise UserError(str(e)) from None
        return cfg


class Webservice(records.Attached):
    """A deployed service. ``Webservice(ws, name)`` re-attaches to it."""

    def __init__(self, workspace, name):
        with workspace.connect() as db:
            rec = records.get(db, records.ServiceRecord, name=name)
            compute = records.get(db, records.ComputeRecord, name=rec.compute) if rec else None
        if rec is None:
            raise UserError(f"no service {name!r} in workspace {workspace.name!r}; deploy one with "
                            "Webservice.deploy_from_image(...).")
        self._attach(workspace, rec, compute_kind=compute.kind if compute else records.AKS)

    RENAMED = {"config": "deployment_config",      # what was asked (specs.ServiceConfig)
               "compute": "compute_name"}
    SKIPPED = ("keys", "state")                   # read fresh: get_keys(), state
    # settled: what the deployment settled from it (specs.Settled); error: why it stopped serving (on an edge
    # device: replaced by which service)

    def _derive(self, rec: records.ServiceRecord, compute_kind):
        self.image_id = f"{rec.image_name}:{rec.image_version}"
        self.compute_type = "AKS" if compute_kind == records.AKS else "Edge"
        self.auth_enabled = bool(rec.keys)    # whether calls must carry a key (``authorization: Bearer <key>``)

    def __repr__(self):
        return f"Webservice(name={self.name!r}, image={self.image_id!r}, compute={self.compute_name!r})"

    def _record(self):
        with self.workspace.connect() as db:
            return records.get(db, records.ServiceRecord, name=self.name)

    @property
    def image(self) -> Image:
        """The image this service runs."""
        name, version = self.image_id.split(":")
        return Image(self.workspace, name, int(version))

    @property
    def compute(self) -> ComputeTarget:
        """The cluster (or edge device) the service runs on."""
        return ComputeTarget(self.workspace, self.compute_name)

    @property
    def log_dir(self) -> Path:
        """Where the replicas' logs are (``specs.replica_log(log_dir, i)``)."""
        return self.workspace.service_folder(self.name)

    # -- deployment ---------------------------------------------------------------------------
    @staticmethod
    def deploy_from_image(workspace, name, image, deployment_config, deployment_target):
        """Declare ``num_replicas`` replicas of ``image`` on free FPGAs of ``deployment_target``; the cluster's
        supervisor starts them and its front end routes to them."""
        check_name(name, "service")
        if not isinstance(image, Image):
            raise UserError("image must be an Image (Image.create(...) or Image(ws, name)).")
        if image.creation_state != records.SUCCEEDED:
            raise UserError(f"image {image.id} is {image.creation_state}; only a built image can be deployed.")
        if not isinstance(deployment_config, AksServiceDeploymentConfiguration):
            raise UserError("deployment_config must come from AksWebservice.deploy_configuration(...).")
        if not isinstance(deployment_target, ComputeTarget):
            raise UserError("deployment_target must be a ComputeTarget (ComputeTarget.create(...)).")
        target = ComputeTarget(workspace, deployment_target.name)
        if target.provisioning_state != records.SUCCEEDED:
            raise UserError(f"compute {target.name!r} is {target.provisioning_state}: {target.provisioning_errors}")
        return Webservice.from_record(workspace, deployment.deploy(workspace, name, image, deployment_config, target),
                                      compute_kind=target.type)

    # -- state --------------------------------------------------------------------------------
    def replica_status(self, target=None):
        """What the cluster's supervisor reports for each replica (state, restarts, last exit), or [] if nothing yet
        (``target``: the service's ComputeTarget, when the caller holds it)."""
        target = target or self.compute
        return deployment.replica_status(target.run_dir, target.running(), self.name, self.settled.generation)

    @property
    def restart_count(self):
        """How many times the service's replicas were restarted after they exited or were killed."""
        return sum(r.restarts for r in self.replica_status())

    @property
    def state(self):
        """Healthy (every replica serves), Transitioning (starting, flashing, restarting), Unhealthy (a replica in
        CrashLoopBackOff, or the cluster's process is down), Failed (a replica cannot load), Replaced, Deleted."""
        rec = self._record()
        target = self.compute if rec is not None else None
        running = target is not None and target.running()
        return deployment.service_state(rec, running, self.replica_status(target) if running else [])

    def wait_for_deployment(self, show_output=False, timeout=600):
        """Wait until every replica serves; UserError (with the log) if a replica fails or keeps crashing."""
        from . import progress
        start = time.monotonic()
        n = self.deployment_config.num_replicas
        bar = progress.bar(total=n, desc=f"deploying {self.name}", unit="replica", show=not show_output)
        last = None
        target = self.compute                 # once: each tick reads only the cluster's status file
        try:
            while True:
                reps = self.replica_status(target)
                states = [r.state for r in reps]
                bar.n = states.count(specs.HEALTHY)
                bar.refresh()
                if show_output and states != last:
                    print(f"{self.name}: replicas {states or ['Scheduled'] * n}", flush=True)
                    last = states
                why = deployment.failure(reps)
                if why:
                    raise UserError(f"service {self.name!r} failed: a replica {why}. Its log:\n"
                                    + self.get_logs(num_lines=30))
                if deployment.all_healthy(reps):
                    break
                if not target.running():
                    raise UserError(f"the cluster {self.compute_name!r} is not running; "
                                    f"ComputeTarget(ws, {self.compute_name!r}).restart() starts it again.")
                if time.monotonic() - start > timeout:
                    raise OperationTimeout(f"service {self.name!r} not ready after {timeout} s (replicas {states}); "
                                           "call wait_for_deployment() again or look at get_logs().")
                time.sleep(0.1)
        finally:
            bar.close()
        deployment.mark_healthy(self.workspace, self.name)
        if show_output:
            print(f"{self.name}: Healthy at {self.scoring_uri}")
        return True

    def _endpoints(self):
        target = self.compute
        return target.endpoints() if target.running() else None

    @property
    def scoring_uri(self):
        """The cluster front end's gRPC address: http://127.0.0.1:PORT (https:// with TLS); None if it is down."""
        ep = self._endpoints()
        return f"{ep.scheme}://{ep.host}:{ep.grpc_port}" if ep else None

    @property
    def rest_uri(self):
        """TensorFlow Serving's REST predict URL of this service on the cluster's front end; None if it is down."""
        ep = self._endpoints()
        return f"{ep.scheme}://{ep.host}:{ep.rest_port}/v1/models/{self.name}:predict" if ep else None

    @property
    def v2_uri(self):
        """The Open Inference Protocol's REST address of this service on the cluster's front end (POST
        ``{v2_uri}/infer``; ``{v2_uri}/ready``); gRPC clients of that protocol (``tritonclient.grpc``) call
        scoring_uri's host:port with the service's name as the model name. None if the front end is down."""
        ep = self._endpoints()
        return f"{ep.scheme}://{ep.host}:{ep.rest_port}/v2/models/{self.name}" if ep else None

    def get_keys(self):
        """(primary, secondary) auth keys; UserError when auth is off."""
        rec = self._record()
        if rec is None or not rec.keys:
            raise UserError(f"service {self.name!r} has no keys: deploy it with auth_enabled=True.")
        return tuple(rec.keys)

    def get_logs(self, num_lines=5000, timestamps=True):
        """The replicas' logs (the last ``num_lines`` lines of each), restarts and supervisor notes included; each
        line's time left off with ``timestamps=False``."""
        return deployment.logs(self.log_dir, self.deployment_config.num_replicas, self.compute_name, num_lines,
                               timestamps)

    def kubernetes_manifests(self, folder, flavour="deployment"):
        """Write the manifests a real Kubernetes cluster with FPGA nodes would run for this service (``kubectl apply
        -f folder`` once the image is pushed): the Secret of its keys and a Deployment and Service, or with
        ``flavour="kserve"`` a KServe InferenceService; returns the files written."""
        from . import kubernetes
        img = self.image
        docs = kubernetes.manifests(deployment.service_spec(self.workspace, self.name),
                                    img.container_image or img.container_tag, flavour=flavour)
        return kubernetes.write(docs, folder)

    @staticmethod
    def list(workspace, compute_type=None, image_name=None):
        """Services in the workspace, filtered by compute type ("AKS" or "Edge") and image name."""
        with workspace.connect() as db:                  # one transaction, two queries
            recs = records.find(db, records.ServiceRecord)
            kinds = {c.name: c.kind for c in records.find(db, records.ComputeRecord)}
        out = [Webservice.from_record(workspace, r, compute_kind=kinds.get(r.compute, records.AKS)) for r in recs
               if image_name is None or r.image_name == image_name]
        return [s for s in out if compute_type is None or s.compute_type == compute_type]

    def delete(self, timeout=30):
        """Remove the service: its replicas stop (the call waits for them) and their FPGAs are free again."""
        deployment.forget_service(self.workspace, self.name)
        try:
            target = self.compute
        except UserError:
            return
        target.publish(timeout)


def stop_all(workspace_path):
    """Delete every service of a workspace and stop its clusters' processes (the tutorial's safety net)."""
    from . import compute
    from .workspace import Workspace
    ws = Workspace(workspace_path)
    for svc in Webservice.list(ws):
        svc.delete()
    compute.stop_all(ws)
