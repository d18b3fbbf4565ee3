"""Web services: replicas as detached gRPC server processes on 127.0.0.1, each holding one FPGA of the cluster.

A service outlives the kernel that deployed it; ``Webservice(ws, name)`` re-attaches from any process.
Every replica has a lease file; deleting the service removes it and the replica exits.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from .compute import ComputeTarget
from .errors import OperationTimeout, UserError
from .image import Image
from .model import check_name
from .workspace import _now


class AksServiceDeploymentConfiguration:
    """Deployment settings: replicas, auth, flashing time, message size."""

    def __init__(self, autoscale_enabled=False, num_replicas=1, auth_enabled=False, flash_seconds=1.0,
                 max_message_mb=64, description=None, tags=None):
        if autoscale_enabled:
            raise UserError("autoscale_enabled=True is not simulated: each replica holds one FPGA; set "
                            "num_replicas instead.")
        if not isinstance(num_replicas, int) or num_replicas < 1:
            raise UserError(f"num_replicas must be a whole number of at least 1, got {num_replicas!r}.")
        if flash_seconds < 0 or max_message_mb <= 0:
            raise UserError("flash_seconds must be >= 0 and max_message_mb > 0.")
        self.autoscale_enabled = False
        self.num_replicas = num_replicas
        self.auth_enabled = bool(auth_enabled)
        self.flash_seconds = float(flash_seconds)
        self.max_message_mb = float(max_message_mb)
        self.description = description
        self.tags = dict(tags or {})

    def to_dict(self):
        return dict(vars(self))


class AksWebservice:
    """The AKS web service type."""

    @staticmethod
    def deploy_configuration(autoscale_enabled=False, num_replicas=1, auth_enabled=False, flash_seconds=1.0,
                             max_message_mb=64, description=None, tags=None):
        """A deployment configuration (validated at once)."""
        return AksServiceDeploymentConfiguration(autoscale_enabled, num_replicas, auth_enabled, flash_seconds,
                                                 max_message_mb, description, tags)


def _pid_alive(pid, lease):
    import psutil
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and any(str(lease) in a for a in p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


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
        self.compute_type = "AKS"
        self.compute_name = row["compute"]
        self.created_time = row["created_time"]
        self.deployment_config = json.loads(row["config"])

    def __repr__(self):
        return f"Webservice(name={self.name!r}, image={self.image_id!r}, compute={self.compute_name!r})"

    def _row(self):
        with self.workspace.connect() as db:
            return db.execute("SELECT * FROM services WHERE name=?", (self.name,)).fetchone()

    def _replicas(self):
        with self.workspace.connect() as db:
            return db.execute("SELECT * FROM replicas WHERE service=? ORDER BY idx", (self.name,)).fetchall()

    @property
    def image(self) -> Image:
        """The image this service runs."""
        name, version = self.image_id.split(":")
        return Image(self.workspace, name, int(version))

    @property
    def run_dir(self) -> Path:
        return self.workspace.path / "services" / self.name

    # -- deployment ---------------------------------------------------------------------------
    @staticmethod
    def deploy_from_image(workspace, name, image, deployment_config, deployment_target):
        """Start ``num_replicas`` replicas of ``image`` on free FPGAs of ``deployment_target``."""
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
        cfg = deployment_config
        keys = [secrets.token_urlsafe(24), secrets.token_urlsafe(24)] if cfg.auth_enabled else None
        with workspace.connect(immediate=True) as db:
            if db.execute("SELECT 1 FROM services WHERE name=?", (name,)).fetchone():
                raise UserError(f"a service named {name!r} exists; delete it (Webservice(ws, {name!r}).delete()) or "
                                "choose another name.")
            held = dict(db.execute("SELECT fpga, service FROM replicas WHERE compute=?", (target.name,)).fetchall())
            replaced = []
            if target.type == "edge":
                if cfg.num_replicas != 1:
                    raise UserError(f"an edge device has one FPGA: deploy with num_replicas=1, not {cfg.num_replicas}.")
                # one model per FPGA: a new deployment replaces the model that runs there
                replaced = [dict(r) for r in db.execute("SELECT * FROM replicas WHERE compute=?", (target.name,))]
                for old in sorted({r["service"] for r in replaced}):
                    db.execute("UPDATE services SET state='Replaced', error=? WHERE name=?",
                               (f"replaced on edge device {target.name!r} by service {name!r} (image {image.id})", old))
                db.execute("DELETE FROM replicas WHERE compute=?", (target.name,))
                held = {}
            free = [i for i in range(target.fpgas) if i not in held]
            if len(free) < cfg.num_replicas:
                n = target.fpgas
                holders = sorted(set(held.values()))
                raise UserError(
                    f"deployment of {name!r} failed: 0/{n} nodes are available: {n - len(free)} Insufficient "
                    f"microsoft.com/fpga ({cfg.num_replicas} replica(s) need {cfg.num_replicas} free FPGA(s); "
                    f"{len(free)} of {n} free on {target.name!r}). Remedy: delete the service that holds them "
                    f"({', '.join(holders) or 'none'}), lower num_replicas, or create a cluster with a larger "
                    "agent_count.")
            db.execute("INSERT INTO services VALUES (?,?,?,?,?,?,?,?,?)",
                       (name, image.name, image.version, target.name, json.dumps(cfg.to_dict()), "Transitioning",
                        json.dumps(keys) if keys else None, None, _now()))
            for idx, fpga in enumerate(free[:cfg.num_replicas]):
                db.execute("INSERT INTO replicas (service, idx, compute, fpga) VALUES (?,?,?,?)",
                           (name, idx, target.name, fpga))
        svc = Webservice(workspace, name)
        for old in sorted({r["service"] for r in replaced}):
            note = (f"edge device {target.name}: service {old!r} replaced by {name!r} (image {image.id}); "
                    "one model runs on the FPGA at a time")
            _stop_replicas([r for r in replaced if r["service"] == old], workspace.path / "services" / old, note)
            svc.run_dir.mkdir(parents=True, exist_ok=True)
            with open(svc.run_dir / "replica-0.log", "a") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {note}\n")
        try:
            for r in svc._replicas():
                svc._start_replica(r, image)
        except Exception:
            svc.delete()
            raise
        return svc

    def _start_replica(self, r, image):
        run = self.run_dir
        run.mkdir(parents=True, exist_ok=True)
        i = r["idx"]
        lease, port_file, log = run / f"replica-{i}.lease", run / f"replica-{i}.port", run / f"replica-{i}.log"
        lease.write_text(f"{self.name} replica {i}\n")
        port_file.unlink(missing_ok=True)
        cfg = self.deployment_config
        cmd = [sys.executable, "-m", "fpga.server", "--package", "package", "--port-file", str(port_file),
               "--lease", str(lease), "--service", self.name,
               "--fpga", f"{r['compute']}/node-{r['fpga']}/fpga-0",
               "--flash-seconds", str(cfg["flash_seconds"]), "--max-message-mb", str(cfg["max_message_mb"])]
        row = self._row()
        if row["keys"]:
            kf = run / "keys"
            kf.write_text("\n".join(json.loads(row["keys"])) + "\n")
            os.chmod(kf, 0o600)
            cmd += ["--keys-file", str(kf)]
        env = {**os.environ, "PYTHONPATH": str(image.context), "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as f:
            proc = subprocess.Popen(cmd, cwd=image.context, env=env, stdin=subprocess.DEVNULL, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        with self.workspace.connect(immediate=True) as db:
            db.execute("UPDATE replicas SET pid=?, log=? WHERE service=? AND idx=?",
                       (proc.pid, str(log.relative_to(self.workspace.path)), self.name, i))

    def _ports(self):
        out = []
        for r in self._replicas():
            pf = self.run_dir / f"replica-{r['idx']}.port"
            out.append(int(pf.read_text()) if pf.exists() else None)
        return out

    def _replica_states(self, timeout=1.0):
        """Per replica: 'Dead', 'Starting', 'Loading' (NOT_SERVING) or 'Healthy'."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        states = []
        for r, port in zip(self._replicas(), self._ports()):
            lease = self.run_dir / f"replica-{r['idx']}.lease"
            if r["pid"] is None or not _pid_alive(r["pid"], lease):
                states.append("Dead")
                continue
            if port is None:
                states.append("Starting")
                continue
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                try:
                    resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""),
                                                                timeout=timeout)
                    states.append("Healthy" if resp.status == health_pb2.HealthCheckResponse.SERVING else "Loading")
                except grpc.RpcError:
                    states.append("Starting")
        return states

    @property
    def state(self):
        """Healthy (all replicas serve), Transitioning (starting or flashing), Unhealthy (a replica died), Failed."""
        row = self._row()
        if row is None:
            return "Deleted"
        if row["state"] in ("Failed", "Replaced"):
            return row["state"]
        states = self._replica_states()
        if "Dead" in states:
            return "Unhealthy"
        return "Healthy" if all(s == "Healthy" for s in states) else "Transitioning"

    def wait_for_deployment(self, show_output=False, timeout=600):
        """Wait until every replica serves; raises UserError (with the log) if one dies."""
        from . import progress
        start = time.monotonic()
        bar = progress.bar(total=len(self._replicas()), desc=f"deploying {self.name}", unit="replica",
                           show=not show_output)
        last = None
        try:
            while True:
                states = self._replica_states()
                bar.n = states.count("Healthy")
                bar.refresh()
                if show_output and states != last:
                    print(f"{self.name}: replicas {states}", flush=True)
                    last = states
                if "Dead" in states:
                    with self.workspace.connect(immediate=True) as db:
                        db.execute("UPDATE services SET state='Failed', error=? WHERE name=?",
                                   ("a replica exited while starting", self.name))
                    raise UserError(f"service {self.name!r} failed: a replica exited while starting. Its log:\n"
                                    + self.get_logs(num_lines=30))
                if all(s == "Healthy" for s in states):
                    break
                if time.monotonic() - start > timeout:
                    raise OperationTimeout(f"service {self.name!r} not ready after {timeout} s (replicas {states}); "
                                           "call wait_for_deployment() again or look at get_logs().")
                time.sleep(0.2)
        finally:
            bar.close()
        with self.workspace.connect(immediate=True) as db:
            db.execute("UPDATE services SET state='Healthy' WHERE name=?", (self.name,))
        if show_output:
            print(f"{self.name}: Healthy at {self.scoring_uri}")
        return True

    @property
    def scoring_uri(self):
        """grpc://127.0.0.1:PORT (comma-separated host:port per replica; clients balance across them)."""
        ports = [p for p in self._ports() if p]
        return "grpc://" + ",".join(f"127.0.0.1:{p}" for p in ports) if ports else None

    def get_keys(self):
        """(primary, secondary) auth keys; UserError when auth is off."""
        row = self._row()
        if not row["keys"]:
            raise UserError(f"service {self.name!r} has no keys: deploy it with auth_enabled=True.")
        return tuple(json.loads(row["keys"]))

    def get_logs(self, num_lines=5000):
        """The replicas' logs (the last ``num_lines`` lines of each)."""
        parts = []
        for r in self._replicas():
            p = self.run_dir / f"replica-{r['idx']}.log"
            lines = p.read_text(errors="replace").splitlines()[-num_lines:] if p.exists() else []
            parts.append(f"--- replica {r['idx']} ({r['compute']} node-{r['fpga']}) ---\n" + "\n".join(lines))
        return "\n".join(parts)

    @staticmethod
    def list(workspace, compute_type=None, image_name=None):
        """Services in the workspace."""
        with workspace.connect() as db:
            names = [r[0] for r in db.execute("SELECT name FROM services ORDER BY name")]
        out = [Webservice(workspace, n) for n in names]
        return [s for s in out if image_name is None or s.image_id.split(":")[0] == image_name]

    def delete(self):
        """Stop the replicas, free their FPGAs and remove the service."""
        _stop_replicas(self._replicas(), self.run_dir)
        with self.workspace.connect(immediate=True) as db:
            db.execute("DELETE FROM replicas WHERE service=?", (self.name,))
            db.execute("DELETE FROM services WHERE name=?", (self.name,))


def _stop_replicas(rows, run_dir, note=None):
    """Remove the replicas' leases, SIGTERM them, and kill what has not stopped after 10 s."""
    import psutil
    procs = []
    for r in rows:
        lease = run_dir / f"replica-{r['idx']}.lease"
        alive = r["pid"] is not None and _pid_alive(r["pid"], lease)
        if note:
            with open(run_dir / f"replica-{r['idx']}.log", "a") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {note}\n")
        lease.unlink(missing_ok=True)
        if alive:
            try:
                p = psutil.Process(r["pid"])
                p.send_signal(signal.SIGTERM)
                procs.append(p)
            except psutil.NoSuchProcess:
                pass
    _, still = psutil.wait_procs(procs, timeout=10)
    for p in still:
        p.kill()
    psutil.wait_procs(still, timeout=5)


def stop_all(workspace_path):
    """Delete every service of a workspace (a safety net for interrupted tutorial runs)."""
    from .workspace import Workspace
    ws = Workspace(workspace_path)
    for svc in Webservice.list(ws):
        svc.delete()
