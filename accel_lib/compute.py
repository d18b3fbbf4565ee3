"""Compute targets: a simulated AKS cluster of Standard_PB6s nodes (6 vCPUs, one Arria 10 FPGA each).

Provisioning is modeled (no VMs exist); the quota in "Standard PBS Family vCPUs" is enforced per workspace.
What runs is real: each cluster has one process on this machine (``fpga.frontend``: the front end that routes
calls, and the supervisor that runs the replicas), started when the cluster is created and stopped when it is
deleted. The cluster's files (its spec, status, endpoints, TLS certificate) are named in ``fpga.cluster``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .errors import UserError
from .fpga import cluster, frontend
from .model import check_name
from .records import now
from .workspace import LOCATIONS

FPGA_VM_SIZES = {"Standard_PB6s": {"vcpus": 6, "fpgas": 1}}
EDGE_DEVICE = {"vcpus": 0, "fpgas": 1}          # Azure Stack Edge / Data Box Edge: one FPGA, outside the quota
EDGE_HOST_VCPUS = 6                             # the edge device's host cores given to its replica (modeled)
QUOTA_NAME = "Standard PBS Family vCPUs"
START_TIMEOUT = 60


def _fpgas(vm_size):
    return (FPGA_VM_SIZES.get(vm_size) or EDGE_DEVICE)["fpgas"]


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


def generate_certificate(common_name, days=365):
    """A certificate for ``common_name`` (also valid for localhost and 127.0.0.1) signed by a CA made for it: returns
    (CA certificate, leaf certificate then the CA, the leaf's key), PEM bytes. The CA may sign no other CA (path
    length 0) and signs only this leaf; the leaf is not a CA, and serves TLS only (serverAuth)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days))
    org = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "accel_lib simulated AKS cluster")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"accel_lib CA for {common_name}"), org])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(valid[0]).not_valid_after(valid[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                                                              org]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid[0]).not_valid_after(valid[1])
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name), x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem), leaf.public_bytes(pem) + ca.public_bytes(pem), key_pem


def write_private(path, data: bytes):
    """Write a file that holds a secret: created 0600 (never readable by others, not even for a moment)."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


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
        rows = db.execute("SELECT location, vm_size, agent_count FROM computes WHERE kind='aks' "
                          "AND provisioning_state='Succeeded'").fetchall()
    out = []
    for loc in ([location] if location else LOCATIONS):
        used = sum(FPGA_VM_SIZES[r["vm_size"]]["vcpus"] * r["agent_count"] for r in rows if r["location"] == loc)
        out.append({"location": loc, "localName": QUOTA_NAME, "currentValue": used,
                    "limit": workspace.fpga_quota_vcpus})
    return out


class ComputeTarget:
    """A compute target. ``ComputeTarget(ws, name)`` re-attaches to one."""

    def __init__(self, workspace, name):
        with workspace.connect() as db:
            row = db.execute("SELECT * FROM computes WHERE name=?", (name,)).fetchone()
        if row is None:
            raise UserError(f"no compute target {name!r} in workspace {workspace.name!r}; create it with "
                            "ComputeTarget.create(...).")
        self.workspace = workspace
        self.name = row["name"]
        self.vm_size, self.agent_count, self.location = row["vm_size"], row["agent_count"], row["location"]
        self.type = row["kind"]
        self.provisioning_state = row["provisioning_state"]
        self.provisioning_errors = row["provisioning_errors"]
        self.created_time = row["created_time"]

    def __repr__(self):
        return (f"ComputeTarget(name={self.name!r}, vm_size={self.vm_size!r}, agent_count={self.agent_count}, "
                f"location={self.location!r}, provisioning_state={self.provisioning_state!r})")

    @property
    def fpgas(self):
        """How many FPGAs the target has (one per node; one on an edge device)."""
        return _fpgas(self.vm_size) * self.agent_count

    @property
    def run_dir(self) -> Path:
        """The cluster's folder: its spec, status, endpoints, certificate and the front end's log."""
        return self.workspace.path / "computes" / self.name

    @property
    def ssl_enabled(self):
        return (self.run_dir / cluster.TLS_CERT_FILE).is_file()

    @property
    def ssl_certificate_pem(self):
        """The certificate clients trust for this cluster (PEM bytes): the CA that signed a generated certificate,
        or your own certificate; None without TLS."""
        p = self.ssl_certificate_file
        return p.read_bytes() if p else None

    @property
    def ssl_certificate_file(self):
        """The path of that certificate (for HTTP clients' ``verify=``), or None without TLS."""
        for name in (cluster.TLS_CA_FILE, cluster.TLS_CERT_FILE):
            p = self.run_dir / name
            if p.is_file():
                return p
        return None

    def endpoints(self, wait=0.0) -> cluster.Endpoints:
        """Where the cluster's front end listens (waits up to ``wait`` s for it to start); UserError if it is down."""
        deadline = time.monotonic() + wait
        while True:
            ep = cluster.read_optional(cluster.Endpoints, self.run_dir)
            if ep is not None and _alive(ep.pid, self.run_dir):
                return ep
            if time.monotonic() >= deadline:
                raise UserError(f"the front end of cluster {self.name!r} is not running; ComputeTarget(ws, "
                                f"{self.name!r}).restart() starts it again (log: {self.run_dir / cluster.LOG_FILE}).")
            time.sleep(0.05)

    def running(self):
        """Whether the cluster's process runs."""
        ep = cluster.read_optional(cluster.Endpoints, self.run_dir)
        return ep is not None and _alive(ep.pid, self.run_dir)

    def publish(self, timeout=30):
        """Declare in ``cluster.json`` the services the workspace's records give this cluster, under the cluster's
        spec lock (``cluster.spec_lock``: no deployment is lost to another at the same time); if its process runs,
        wait until its supervisor has taken the change (replicas of new services started, of removed ones
        stopped)."""
        from .deployment import service_specs
        vcpus = FPGA_VM_SIZES[self.vm_size]["vcpus"] if self.type == "aks" else EDGE_HOST_VCPUS
        with cluster.spec_lock(self.run_dir):
            services = service_specs(self.workspace, self)
            try:
                before = cluster.read_optional(cluster.ClusterSpec, self.run_dir)
            except Exception:  # noqa: BLE001 - written by an older accel_lib: replaced now
                before = None
            revision = (before.revision if before else 0) + 1
            cluster.write(cluster.ClusterSpec(name=self.name, nodes=self.fpgas, vcpus_per_node=vcpus,
                                              services=services, tls=self.ssl_enabled, revision=revision),
                          self.run_dir)
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            st = cluster.read_optional(cluster.ClusterStatus, self.run_dir)
            if st is not None and st.revision >= revision:
                return
            time.sleep(0.02)

    def restart(self):
        """Start the cluster's process if it is not running (idempotent): after a reboot, or if it was killed."""
        if self.provisioning_state != "Succeeded":
            raise UserError(f"compute {self.name!r} is {self.provisioning_state}: {self.provisioning_errors}")
        if self.running():
            return self
        try:
            cluster.read(cluster.ClusterSpec, self.run_dir)
        except Exception:  # noqa: BLE001 - missing, or written by an older accel_lib: the records say what runs
            self.publish()
        (self.run_dir / cluster.ENDPOINTS_FILE).unlink(missing_ok=True)
        with open(self.run_dir / cluster.LOG_FILE, "ab") as log:
            subprocess.Popen(frontend.command(sys.executable, self.run_dir), stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.endpoints(wait=START_TIMEOUT)
        return self

    def stop(self, timeout=20):
        """Stop the cluster's process and its replicas (the services stay recorded; restart() brings them back)."""
        import psutil
        ep = cluster.read_optional(cluster.Endpoints, self.run_dir)
        if ep is None or not _alive(ep.pid, self.run_dir):
            return
        p = psutil.Process(ep.pid)
        p.terminate()
        try:
            p.wait(timeout)
        except psutil.TimeoutExpired:
            p.kill()
            p.wait(5)

    @staticmethod
    def create(workspace, name, provisioning_configuration):
        """Provision a cluster (modeled); fails clearly when the FPGA quota is short."""
        check_name(name, "compute")
        cfg = provisioning_configuration
        if not isinstance(cfg, (AksProvisioningConfiguration, EdgeProvisioningConfiguration)):
            raise UserError("provisioning_configuration must come from AksCompute.provisioning_configuration(...) or "
                            "EdgeCompute.provisioning_configuration(...).")
        kind = "edge" if isinstance(cfg, EdgeProvisioningConfiguration) else "aks"
        with workspace.connect(immediate=True) as db:
            if db.execute("SELECT 1 FROM computes WHERE name=?", (name,)).fetchone():
                raise UserError(f"a compute target named {name!r} exists; reuse it with ComputeTarget(ws, {name!r}) "
                                "or delete it first.")
            used = sum(FPGA_VM_SIZES[r[0]]["vcpus"] * r[1] for r in db.execute(
                "SELECT vm_size, agent_count FROM computes WHERE location=? AND provisioning_state='Succeeded' "
                "AND kind='aks'", (cfg.location,)))
            limit = workspace.fpga_quota_vcpus
            if kind == "aks" and used + cfg.vcpus > limit:
                state = "Failed"
                errors = (f"QuotaExceeded: {cfg.agent_count} x {cfg.vm_size} needs {cfg.vcpus} '{QUOTA_NAME}' in "
                          f"{cfg.location}; {used} of {limit} are in use. Delete a cluster, lower agent_count, or "
                          "raise "
                          "the workspace's quota (Workspace.create(..., fpga_quota_vcpus=N)).")
            else:
                state, errors = "Succeeded", None
            db.execute("INSERT INTO computes VALUES (?,?,?,?,?,?,?,?)",
                       (name, cfg.vm_size, cfg.agent_count, cfg.location, kind, state, errors, now()))
        target = ComputeTarget(workspace, name)
        if state == "Succeeded":
            try:
                target._provision(cfg)
            except BaseException:
                target.delete()
                raise
        return target

    def _provision(self, cfg):
        """Write the cluster's folder (0700; its key 0600) and certificate, and start its front end and
        supervisor."""
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        self.run_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.run_dir.mkdir(mode=0o700)
        if cfg.ssl:
            (self.run_dir / "tls").mkdir(mode=0o700)
            if "leaf_domain_label" in cfg.ssl:
                import secrets
                cn = f"{cfg.ssl['leaf_domain_label']}{secrets.token_hex(3)}.{cfg.location}.cloudapp.azure.com"
                ca, cert, key = generate_certificate(cn)
                (self.run_dir / cluster.TLS_CA_FILE).write_bytes(ca)
            else:
                cert, key = Path(cfg.ssl["cert"]).read_bytes(), Path(cfg.ssl["key"]).read_bytes()
            (self.run_dir / cluster.TLS_CERT_FILE).write_bytes(cert)
            write_private(self.run_dir / cluster.TLS_KEY_FILE, key)
        self.publish()
        self.restart()

    def wait_for_completion(self, show_output=False):
        """Wait for provisioning (modeled: done at once); show_output prints the state and the front end."""
        if show_output:
            what = self.vm_size if self.type == "edge" else f"{self.agent_count} x {self.vm_size}"
            print(f"Provisioning of {self.name} ({what}, {self.location}; modeled): {self.provisioning_state}")
            if self.provisioning_state == "Succeeded":
                print(f"Front end: one address for every service on the cluster, "
                      f"{'TLS' if self.ssl_enabled else 'plain text'} (gRPC and REST).")
        return self.provisioning_state == "Succeeded"

    @staticmethod
    def list(workspace):
        """Compute targets in the workspace."""
        with workspace.connect() as db:
            names = [r[0] for r in db.execute("SELECT name FROM computes ORDER BY name")]
        return [ComputeTarget(workspace, n) for n in names]

    def delete(self):
        """Delete the cluster and stop its process; refused while a service is deployed to it."""
        with self.workspace.connect(immediate=True) as db:
            users = [r[0] for r in db.execute("SELECT name FROM services WHERE compute=?", (self.name,))]
            if users:
                raise UserError(f"compute {self.name!r} runs service {', '.join(users)}; delete the service first "
                                "(service.delete()).")
            db.execute("DELETE FROM computes WHERE name=?", (self.name,))
        (self.run_dir / cluster.SPEC_FILE).unlink(missing_ok=True)       # the process stops when its spec is gone
        self.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _alive(pid, run_dir):
    """Whether ``pid`` is the cluster process of ``run_dir``."""
    import psutil
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and str(run_dir) in " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def stop_all(workspace):
    """Stop every cluster process of a workspace (records stay; ``restart()`` brings a cluster back)."""
    for target in ComputeTarget.list(workspace):
        target.stop()
