"""Web services: records and lifecycle. A deployment is declared in the cluster's spec; the cluster's process
(``fpga.frontend``) runs the replicas, each a gRPC server holding one FPGA, and routes calls to them.

A service outlives the kernel that deployed it; ``Webservice(ws, name)`` re-attaches from any process.
Scheduling and the translation of records into the cluster's spec live in ``deployment``; supervision lives in
``fpga.supervisor``.
"""
from __future__ import annotations

import dataclasses
import json
import secrets
import shutil
import time
from pathlib import Path

from .compute import ComputeTarget
from .deployment import schedule
from .errors import OperationTimeout, UserError
from .fpga import cluster
from .fpga.manifest import ManifestError
from .image import Image
from .model import check_name
from .records import now

_LIMITS, _CFG = cluster.ServiceLimits(), cluster.ServiceConfig()      # the defaults, spelled there only
AksServiceDeploymentConfiguration = cluster.ServiceConfig     # what deploy_configuration() returns, typed


class AksWebservice:
    """The AKS web service type."""

    @staticmethod
    def deploy_configuration(autoscale_enabled=False, num_replicas=_CFG.num_replicas, auth_enabled=None,
                             flash_seconds=_CFG.flash_seconds,
                             max_message_mb=_LIMITS.max_message_mb, description=None, tags=None,
                             max_images=_LIMITS.max_images, max_pixels=_LIMITS.max_pixels,
                             max_request_mb=_LIMITS.max_request_mb) -> cluster.ServiceConfig:
        """A deployment configuration (validated at once). Keys (``auth_enabled``) are on by default on AKS, as in
        Azure ML, and off on an edge device. Limits per request: ``max_message_mb``, ``max_images`` and
        ``max_request_mb`` (what it may decode to); per image: ``max_pixels`` (checked before decoding)."""
        if autoscale_enabled:
            raise UserError("autoscale_enabled=True is not simulated: each replica holds one FPGA; set "
                            "num_replicas instead.")
        cfg = cluster.ServiceConfig(
            num_replicas=num_replicas, auth_enabled=None if auth_enabled is None else bool(auth_enabled),
            flash_seconds=float(flash_seconds) if isinstance(flash_seconds, (int, float)) else flash_seconds,
            description=description, tags=dict(tags or {}),
            limits=cluster.ServiceLimits(max_message_mb=max_message_mb, max_images=max_images,
                                         max_pixels=max_pixels, max_request_mb=max_request_mb))
        try:
            cfg.validate()
        except ManifestError as e:
            raise UserError(str(e)) from None
        return cfg


def _note(log_dir, idx, note):
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(cluster.replica_log(log_dir, idx), "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {note}\n")


class Webservice:
    """A deployed service. ``Webservice(ws, name)`` re-attaches to it."""

    def __init__(self, workspace, name):
        self.workspace = workspace
        self.name = name
        row = self._row()
        if row is None:
            raise UserError(f"no service {name!r} in workspace {workspace.name!r}; deploy one with "
                            "Webservice.deploy_from_image(...).")
        self.image_id = f"{row['image_name']}:{row['image_version']}"
        self.compute_type = "AKS" if self._compute_kind() == "aks" else "Edge"
        self.compute_name = row["compute"]
        self.created_time = row["created_time"]
        self.deployment_config = cluster.ServiceConfig.from_json(row["config"])     # typed
        self.error = row["error"]           # why it stopped serving (on an edge device: replaced by which service)

    def __repr__(self):
        return f"Webservice(name={self.name!r}, image={self.image_id!r}, compute={self.compute_name!r})"

    def _row(self):
        with self.workspace.connect() as db:
            return db.execute("SELECT * FROM services WHERE name=?", (self.name,)).fetchone()

    def _compute_kind(self):
        with self.workspace.connect() as db:
            row = db.execute("SELECT kind FROM computes WHERE name=(SELECT compute FROM services WHERE name=?)",
                             (self.name,)).fetchone()
        return row[0] if row else "aks"

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
        """Where the replicas' logs are (``cluster.replica_log(log_dir, i)``)."""
        return self.workspace.service_folder(self.name)

    # -- deployment ---------------------------------------------------------------------------
    @staticmethod
    def deploy_from_image(workspace, name, image, deployment_config, deployment_target):
        """Declare ``num_replicas`` replicas of ``image`` on free FPGAs of ``deployment_target``; the cluster's
        supervisor starts them and its front end routes to them."""
        check_name(name, "service")
        if not isinstance(image, Image):
            raise UserError("image must be an Image (Image.create(...) or Image(ws, name)).")
        if image.creation_state != "Succeeded":
            raise UserError(f"image {image.id} is {image.creation_state}; only a built image can be deployed.")
        if not isinstance(deployment_config, AksServiceDeploymentConfiguration):
            raise UserError("deployment_config must come from AksWebservice.deploy_configuration(...).")
        if not isinstance(deployment_target, ComputeTarget):
            raise UserError("deployment_target must be a ComputeTarget (ComputeTarget.create(...)).")
        target = ComputeTarget(workspace, deployment_target.name)
        if target.provisioning_state != "Succeeded":
            raise UserError(f"compute {target.name!r} is {target.provisioning_state}: {target.provisioning_errors}")
        cfg = dataclasses.replace(deployment_config, generation=time.time_ns() // 1000)
        if cfg.auth_enabled is None:                    # AKS: keys on, as in Azure ML; an edge device: off
            cfg.auth_enabled = target.type == "aks"
        keys = [secrets.token_urlsafe(24), secrets.token_urlsafe(24)] if cfg.auth_enabled else None
        with workspace.connect(immediate=True) as db:
            if db.execute("SELECT 1 FROM services WHERE name=?", (name,)).fetchone():
                raise UserError(f"a service named {name!r} exists; delete it (Webservice(ws, {name!r}).delete()) or "
                                "choose another name.")
            held = dict(db.execute("SELECT fpga, service FROM replicas WHERE compute=?", (target.name,)).fetchall())
            try:
                nodes, replaced = schedule(target.fpgas, held, cfg.num_replicas, edge=target.type == "edge")
            except UserError as e:
                raise UserError(f"deployment of {name!r} to {target.name!r} failed: {e}") from None
            for old in replaced:
                db.execute("UPDATE services SET state='Replaced', error=? WHERE name=?",
                           (f"replaced on edge device {target.name!r} by service {name!r} (image {image.id})", old))
                db.execute("DELETE FROM replicas WHERE service=?", (old,))
            db.execute("INSERT INTO services VALUES (?,?,?,?,?,?,?,?,?)",
                       (name, image.name, image.version, target.name, cfg.to_json(), "Transitioning",
                        json.dumps(keys) if keys else None, None, now()))
            for idx, node in enumerate(nodes):
                db.execute("INSERT INTO replicas (service, idx, compute, fpga) VALUES (?,?,?,?)",
                           (name, idx, target.name, node))
        svc = Webservice(workspace, name)
        shutil.rmtree(svc.log_dir, ignore_errors=True)           # a new service: logs of an earlier one go
        for old in replaced:
            note = (f"edge device {target.name}: service {old!r} replaced by {name!r} (image {image.id}); "
                    "one model runs on the FPGA at a time")
            _note(workspace.service_folder(old), 0, note)
            _note(svc.log_dir, 0, note)
        svc.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            target.publish()
            target.restart()
        except Exception:
            svc.delete()
            raise
        return svc

    # -- state --------------------------------------------------------------------------------
    def replica_status(self):
        """What the cluster's supervisor reports for each replica (state, restarts, last exit), or [] if nothing yet."""
        target = self.compute
        st = cluster.read_optional(cluster.ClusterStatus, target.run_dir) if target.running() else None
        mine = st.service(self.name) if st else None
        if mine is None or mine.generation != self.deployment_config.generation:
            return []
        return mine.replicas

    @property
    def restart_count(self):
        """How many times the service's replicas were restarted after they exited or were killed."""
        return sum(r.restarts for r in self.replica_status())

    @property
    def state(self):
        """Healthy (every replica serves), Transitioning (starting, flashing, restarting), Unhealthy (a replica in
        CrashLoopBackOff, or the cluster's process is down), Failed (a replica cannot load), Replaced, Deleted."""
        from .fpga import cluster
        row = self._row()
        if row is None:
            return "Deleted"
        if row["state"] == "Replaced":
            return "Replaced"
        if not self.compute.running():
            return "Unhealthy"
        states = [r.state for r in self.replica_status()]
        if cluster.FAILED in states:
            return "Failed"
        if states and all(s == cluster.HEALTHY for s in states):
            return "Healthy"
        if cluster.BACKOFF in states:
            return "Unhealthy"
        return "Transitioning"

    def wait_for_deployment(self, show_output=False, timeout=600):
        """Wait until every replica serves; UserError (with the log) if a replica fails or keeps crashing."""
        from . import progress
        start = time.monotonic()
        n = self.deployment_config.num_replicas
        bar = progress.bar(total=n, desc=f"deploying {self.name}", unit="replica", show=not show_output)
        last = None
        try:
            while True:
                reps = self.replica_status()
                states = [r.state for r in reps]
                bar.n = states.count(cluster.HEALTHY)
                bar.refresh()
                if show_output and states != last:
                    print(f"{self.name}: replicas {states or ['Scheduled'] * n}", flush=True)
                    last = states
                crashing = [r for r in reps if r.state == cluster.BACKOFF and r.restarts >= 3]
                if cluster.FAILED in states or crashing:
                    why = "cannot load its model" if cluster.FAILED in states else "keeps crashing (CrashLoopBackOff)"
                    raise UserError(f"service {self.name!r} failed: a replica {why}. Its log:\n"
                                    + self.get_logs(num_lines=30))
                if states and all(s == cluster.HEALTHY for s in states):
                    break
                if not self.compute.running():
                    raise UserError(f"the cluster {self.compute_name!r} is not running; "
                                    f"ComputeTarget(ws, {self.compute_name!r}).restart() starts it again.")
                if time.monotonic() - start > timeout:
                    raise OperationTimeout(f"service {self.name!r} not ready after {timeout} s (replicas {states}); "
                                           "call wait_for_deployment() again or look at get_logs().")
                time.sleep(0.1)
        finally:
            bar.close()
        with self.workspace.connect(immediate=True) as db:
            db.execute("UPDATE services SET state='Healthy' WHERE name=?", (self.name,))
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
    def auth_enabled(self) -> bool:
        """Whether calls must carry one of the service's keys (``authorization: Bearer <key>``)."""
        return bool(self.deployment_config.auth_enabled)

    def get_keys(self):
        """(primary, secondary) auth keys; UserError when auth is off."""
        row = self._row()
        if not row["keys"]:
            raise UserError(f"service {self.name!r} has no keys: deploy it with auth_enabled=True.")
        return tuple(json.loads(row["keys"]))

    def get_logs(self, num_lines=5000):
        """The replicas' logs (the last ``num_lines`` lines of each), restarts and supervisor notes included."""
        parts = []
        for i in range(self.deployment_config.num_replicas):
            p = cluster.replica_log(self.log_dir, i)
            lines = p.read_text(errors="replace").splitlines()[-num_lines:] if p.exists() else []
            parts.append(f"--- replica {i} ({self.compute_name}) ---\n" + "\n".join(lines))
        return "\n".join(parts)

    def kubernetes_manifests(self, folder):
        """Write the Deployment, Service and Secret a real Kubernetes cluster with FPGA nodes would run for this
        service (``kubectl apply -f folder`` once the image is pushed); returns the files written."""
        from . import kubernetes
        cfg = self.deployment_config
        row = self._row()
        docs = kubernetes.manifests(self.name, self.image.image_location, cfg.num_replicas,
                                    keys=json.loads(row["keys"]) if row["keys"] else None,
                                    flash_seconds=cfg.flash_seconds, limits=cfg.limits)
        return kubernetes.write(docs, folder)

    @staticmethod
    def list(workspace, compute_type=None, image_name=None):
        """Services in the workspace, filtered by compute type ("AKS" or "Edge") and image name."""
        with workspace.connect() as db:
            names = [r[0] for r in db.execute("SELECT name FROM services ORDER BY name")]
        out = [Webservice(workspace, n) for n in names]
        return [s for s in out if (image_name is None or s.image_id.split(":")[0] == image_name)
                and (compute_type is None or s.compute_type == compute_type)]

    def delete(self, timeout=30):
        """Remove the service: its replicas stop (the call waits for them) and their FPGAs are free again."""
        with self.workspace.connect(immediate=True) as db:
            db.execute("DELETE FROM replicas WHERE service=?", (self.name,))
            db.execute("DELETE FROM services WHERE name=?", (self.name,))
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
