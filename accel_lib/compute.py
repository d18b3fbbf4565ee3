"""Compute targets: a simulated AKS cluster of Standard_PB6s nodes (6 vCPUs, one Arria 10 FPGA each).

Provisioning is modeled (no VMs exist); the quota in "Standard PBS Family vCPUs" is enforced per workspace.
What runs is real: each cluster has one process on this machine (``fpga.cluster.frontend``: the front end that routes
calls, and the supervisor that runs the replicas), started when the cluster is created and stopped when it is
deleted. The cluster's files (its spec, status, endpoints, TLS certificate) are named in ``fpga.cluster.specs``;
the process's lifecycle (folder, start, stop) is ``fpga.cluster.lifecycle``, which ComputeTarget calls with plain
values; what the spec declares is ``deployment``'s (``publish``). The records are ``records.ComputeRecord``.
"""
from __future__ import annotations

from pathlib import Path

from . import deployment, records
from .errors import UserError
from .fpga.cluster import certificates, specs, lifecycle
from .records import check_name
from .workspace import LOCATIONS

FPGA_VM_SIZES = {"Standard_PB6s": {"vcpus": 6, "fpgas": 1, "device": "arria10-pb6"}}   # device: timing.PRESETS
EDGE_DEVICE = {"vcpus": 0, "fpgas": 1, "device": "arria10-edge"}    # Data Box Edge: one FPGA, outside the quota
EDGE_HOST_VCPUS = 6                             # the edge device's host cores given to its replica (modeled)
QUOTA_NAME = "Standard PBS Family vCPUs"


def _fpgas(vm_size):
    return (FPGA_VM_SIZES.get(vm_size) or EDGE_DEVICE)["fpgas"]


def _device(vm_size) -> str:
    """The FPGA device a node of ``vm_size`` carries (a ``fpga.device.timing`` preset)."""
    return (FPGA_VM_SIZES.get(vm_size) or EDGE_DEVICE)["device"]


def _ssl_settings(ssl_cert_pem_file, ssl_key_pem_file, ssl_cname, leaf_domain_label):
    own = ssl_cert_pem_file or ssl_key_pem_file
    if own and leaf_domain_label:
        raise UserError("enable_ssl takes either your own certificate (ssl_cert_pem_file, ssl_key_pem_file, "
                        "ssl_cname) or leaf_domain_label for a generated one, not both.")
    if own:
        if not (ssl_cert_pem_file and ssl_key_pem_file and ssl_cname):
            raise UserError("with your own certificate, give all of ssl_cert_pem_file, ssl_key_pem_file and "
                            "ssl_cname (the name the certificate is for).")
        for f in (ssl_cert_pem_file, ssl_key_pem_file):
            if not Path(f).is_file():
                raise UserError(f"no file {str(f)!r}: give the path of a PEM file.")
        return {"cert": str(Path(ssl_cert_pem_file).resolve()), "key": str(Path(ssl_key_pem_file).resolve()),
                "cname": ssl_cname}
    if not leaf_domain_label:
        raise UserError("enable_ssl needs leaf_domain_label (a certificate is generated for the cluster) or your "
                        "own ssl_cert_pem_file, ssl_key_pem_file and ssl_cname.")
    import re
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,62}", leaf_domain_label):
        raise UserError(f"leaf_domain_label {leaf_domain_label!r}: use lowercase letters, digits and '-', "
                        "starting with a letter.")
    return {"leaf_domain_label": leaf_domain_label}


class AksProvisioningConfiguration:
    """A validated cluster request: vm_size, agent_count, location."""

    def __init__(self, vm_size, agent_count, location):
        if vm_size not in FPGA_VM_SIZES:
            raise UserError(f"vm_size {vm_size!r} has no FPGA; FPGA models deploy to {sorted(FPGA_VM_SIZES)} "
                            "(6 vCPUs and one Intel Arria 10 FPGA per node).")
        if not isinstance(agent_count, int) or not 1 <= agent_count <= 100:
            raise UserError(f"agent_count must be a whole number from 1 to 100, got {agent_count!r}.")
        if location not in LOCATIONS:
            raise UserError(f"location {location!r} has no {vm_size} VMs; choose one of {', '.join(LOCATIONS)}.")
        self.vm_size, self.agent_count, self.location = vm_size, agent_count, location
        self.ssl = None

    def enable_ssl(self, ssl_cert_pem_file=None, ssl_key_pem_file=None, ssl_cname=None, leaf_domain_label=None):
        """Serve the cluster over TLS: your own certificate and key for ``ssl_cname``, or, with
        ``leaf_domain_label``, a certificate generated for the cluster (valid for 127.0.0.1 and localhost too)."""
        self.ssl = _ssl_settings(ssl_cert_pem_file, ssl_key_pem_file, ssl_cname, leaf_domain_label)
        return self

    @property
    def vcpus(self):
        """vCPUs this cluster takes from the quota."""
        return FPGA_VM_SIZES[self.vm_size]["vcpus"] * self.agent_count


class EdgeProvisioningConfiguration:
    """An edge device (Data Box Edge style) with one FPGA that runs one model at a time."""

    def __init__(self, device_name, location):
        if location not in LOCATIONS:
            raise UserError(f"location {location!r}: choose one of {', '.join(LOCATIONS)}.")
        self.vm_size, self.agent_count, self.location = f"DataBoxEdge:{device_name}", 1, location
        self.vcpus = 0
        self.ssl = None


class EdgeCompute:
    """The edge compute type: a device on your premises with one FPGA."""

    @staticmethod
    def provisioning_configuration(device_name="databox-edge", location="eastus"):
        """An edge device configuration."""
        return EdgeProvisioningConfiguration(device_name, location)


class AksCompute:
    """The AKS compute type."""

    @staticmethod
    def provisioning_configuration(vm_size="Standard_PB6s", agent_count=1, location="eastus"):
        """A cluster configuration (validated at once)."""
        return AksProvisioningConfiguration(vm_size, agent_count, location)


def list_usage(workspace, location=None):
    """Quota use like ``az vm list-usage``: one row for "Standard PBS Family vCPUs" per location."""
    with workspace.connect() as db:
        held = records.find(db, records.ComputeRecord, kind=records.AKS, provisioning_state=records.SUCCEEDED)
    out = []
    for loc in ([location] if location else LOCATIONS):
        out.append({"location": loc, "localName": QUOTA_NAME, "currentValue": _vcpus_in(held, loc),
                    "limit": workspace.fpga_quota_vcpus})
    return out


def _vcpus_in(computes, location):
    """The quota's vCPUs that AKS clusters among ``computes`` (records) hold in ``location``."""
    return sum(FPGA_VM_SIZES[c.vm_size]["vcpus"] * c.agent_count for c in computes
               if c.location == location and c.kind == records.AKS and c.provisioning_state == records.SUCCEEDED)


class ComputeTarget(records.Attached):
    """A compute target. ``ComputeTarget(ws, name)`` re-attaches to one."""

    def __init__(self, workspace, name):
        with workspace.connect() as db:
            rec = records.get(db, records.ComputeRecord, name=name)
        if rec is None:
            raise UserError(f"no compute target {name!r} in workspace {workspace.name!r}; create it with "
                            "ComputeTarget.create(...).")
        self._attach(workspace, rec)

    RENAMED = {"kind": "type"}          # records.AKS or records.EDGE

    def __repr__(self):
        return (f"ComputeTarget(name={self.name!r}, vm_size={self.vm_size!r}, agent_count={self.agent_count}, "
                f"location={self.location!r}, provisioning_state={self.provisioning_state!r})")

    @property
    def device_preset(self) -> str:
        """The FPGA device its nodes carry (a ``fpga.device.timing`` preset): what a package must be converted for."""
        return _device(self.vm_size)

    @property
    def fpgas(self):
        """How many FPGAs the target has (one per node; one on an edge device)."""
        return _fpgas(self.vm_size) * self.agent_count

    @property
    def run_dir(self) -> Path:
        """The cluster's folder: its spec, status, endpoints, certificate and the front end's log."""
        return self.workspace.layout.compute_dir(self.name)

    @property
    def ssl_enabled(self):
        return lifecycle.tls_enabled(self.run_dir)

    @property
    def ssl_certificate_pem(self):
        """The certificate clients trust for this cluster (PEM bytes): the CA that signed a generated certificate,
        or your own certificate; None without TLS."""
        p = self.ssl_certificate_file
        return p.read_bytes() if p else None

    @property
    def ssl_certificate_file(self):
        """The path of that certificate (for HTTP clients' ``verify=``), or None without TLS."""
        return lifecycle.trusted_certificate(self.run_dir)

    @property
    def host_vcpus(self):
        """The host cores each FPGA's replica shares: a node's vCPUs on AKS, the edge device's host cores."""
        return FPGA_VM_SIZES[self.vm_size]["vcpus"] if self.type == records.AKS else EDGE_HOST_VCPUS

    def endpoints(self, wait=0.0) -> specs.Endpoints:
        """Where the cluster's front end listens (waits up to ``wait`` s for it to start); UserError if it is down."""
        try:
            return lifecycle.endpoints(self.run_dir, wait)
        except lifecycle.NotRunning:
            raise UserError(f"the front end of cluster {self.name!r} is not running; ComputeTarget(ws, "
                            f"{self.name!r}).restart() starts it again (log: {self.run_dir / specs.LOG_FILE}).") \
                from None

    def running(self):
        """Whether the cluster's process runs."""
        return lifecycle.running(self.run_dir)

    def publish(self, timeout=30):
        """Declare in ``cluster.json`` the services the workspace's records give this cluster, under the cluster's
        spec lock (no deployment is lost to another at the same time); if its process runs, wait until its
        supervisor has taken the change (replicas of new services started, of removed ones stopped)."""
        deployment.publish(self.workspace, self, timeout)

    def restart(self):
        """Start the cluster's process if it is not running (idempotent): after a reboot, or if it was killed."""
        if self.provisioning_state != records.SUCCEEDED:
            raise UserError(f"compute {self.name!r} is {self.provisioning_state}: {self.provisioning_errors}")
        if self.running():
            return self
        if not lifecycle.has_spec(self.run_dir):      # missing, or from an older accel_lib: the records say
            self.publish()
        deployment.start(self)
        return self

    def stop(self, timeout=20):
        """Stop the cluster's process and its replicas (the services stay recorded; restart() brings them back)."""
        lifecycle.stop(self.run_dir, timeout)

    @staticmethod
    def create(workspace, name, provisioning_configuration):
        """Provision a cluster (modeled); fails clearly when the FPGA quota is short."""
        check_name(name, "compute")
        cfg = provisioning_configuration
        if not isinstance(cfg, (AksProvisioningConfiguration, EdgeProvisioningConfiguration)):
            raise UserError("provisioning_configuration must come from AksCompute.provisioning_configuration(...) or "
                            "EdgeCompute.provisioning_configuration(...).")
        kind = records.EDGE if isinstance(cfg, EdgeProvisioningConfiguration) else records.AKS
        with workspace.connect(immediate=True) as db:
            if records.exists(db, records.ComputeRecord, name=name):
                raise UserError(f"a compute target named {name!r} exists; reuse it with ComputeTarget(ws, {name!r}) "
                                "or delete it first.")
            used = _vcpus_in(records.find(db, records.ComputeRecord, location=cfg.location), cfg.location)
            limit = workspace.fpga_quota_vcpus
            if kind == records.AKS and used + cfg.vcpus > limit:
                state = records.FAILED
                errors = (f"QuotaExceeded: {cfg.agent_count} x {cfg.vm_size} needs {cfg.vcpus} '{QUOTA_NAME}' in "
                          f"{cfg.location}; {used} of {limit} are in use. Delete a cluster, lower agent_count, or "
                          "raise "
                          "the workspace's quota (Workspace.create(..., fpga_quota_vcpus=N)).")
            else:
                state, errors = records.SUCCEEDED, None
            rec = records.ComputeRecord(name=name, vm_size=cfg.vm_size, agent_count=cfg.agent_count,
                                        location=cfg.location, kind=kind, provisioning_state=state,
                                        provisioning_errors=errors, created_time=records.now())
            records.insert(db, rec)
        target = ComputeTarget.from_record(workspace, rec)
        if state == records.SUCCEEDED:
            try:
                target._provision(cfg)
            except BaseException:
                target.delete()
                raise
        return target

    def _provision(self, cfg):
        """Write the cluster's folder (0700; its key 0600) and certificate, and start its front end and
        supervisor."""
        tls = {}
        if cfg.ssl and "leaf_domain_label" in cfg.ssl:
            import secrets
            cn = f"{cfg.ssl['leaf_domain_label']}{secrets.token_hex(3)}.{cfg.location}.cloudapp.azure.com"
            tls = dict(zip(("ca", "cert", "key"), certificates.generate(cn)))
        elif cfg.ssl:
            tls = {"cert": Path(cfg.ssl["cert"]).read_bytes(), "key": Path(cfg.ssl["key"]).read_bytes()}
        lifecycle.prepare(self.run_dir, **tls)
        self.publish()
        self.restart()

    def wait_for_completion(self, show_output=False):
        """Wait for provisioning (modeled: done at once); show_output prints the state and the front end."""
        if show_output:
            what = self.vm_size if self.type == records.EDGE else f"{self.agent_count} x {self.vm_size}"
            print(f"Provisioning of {self.name} ({what}, {self.location}; modeled): {self.provisioning_state}")
            if self.provisioning_state == records.SUCCEEDED:
                print(f"Front end: one address for every service on the cluster, "
                      f"{'TLS' if self.ssl_enabled else 'plain text'} (gRPC and REST).")
        return self.provisioning_state == records.SUCCEEDED

    @staticmethod
    def list(workspace):
        """Compute targets in the workspace."""
        with workspace.connect() as db:
            recs = records.find(db, records.ComputeRecord)
        return [ComputeTarget.from_record(workspace, r) for r in recs]

    def delete(self):
        """Delete the cluster and stop its process; refused while a service is deployed to it."""
        with self.workspace.connect(immediate=True) as db:
            users = [r.name for r in records.users_of(db, records.ComputeRecord(name=self.name))]
            if users:
                raise UserError(f"compute {self.name!r} runs service {', '.join(users)}; delete the service first "
                                "(service.delete()).")
            records.delete(db, records.ComputeRecord, name=self.name)
        lifecycle.remove(self.run_dir)


def stop_all(workspace):
    """Stop every cluster process of a workspace (records stay; ``restart()`` brings a cluster back)."""
    for target in ComputeTarget.list(workspace):
        target.stop()
