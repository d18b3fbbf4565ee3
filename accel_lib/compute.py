"""Compute targets: a simulated AKS cluster of Standard_PB6s nodes (6 vCPUs, one Arria 10 FPGA each).

Provisioning is modeled (no VMs exist); the quota in "Standard PBS Family vCPUs" is enforced per workspace.
"""
from __future__ import annotations

from .errors import UserError
from .model import check_name
from .workspace import LOCATIONS, _now

FPGA_VM_SIZES = {"Standard_PB6s": {"vcpus": 6, "fpgas": 1}}
EDGE_DEVICE = {"vcpus": 0, "fpgas": 1}          # Azure Stack Edge / Data Box Edge: one FPGA, outside the quota


def _fpgas(vm_size):
    return (FPGA_VM_SIZES.get(vm_size) or EDGE_DEVICE)["fpgas"]
QUOTA_NAME = "Standard PBS Family vCPUs"


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
                       (name, cfg.vm_size, cfg.agent_count, cfg.location, kind, state, errors, _now()))
        return ComputeTarget(workspace, name)

    def wait_for_completion(self, show_output=False):
        """Wait for provisioning (modeled: done at once); show_output prints the state."""
        if show_output:
            what = self.vm_size if self.type == "edge" else f"{self.agent_count} x {self.vm_size}"
            print(f"Provisioning of {self.name} ({what}, {self.location}; modeled): {self.provisioning_state}")
        return self.provisioning_state == "Succeeded"

    @staticmethod
    def list(workspace):
        """Compute targets in the workspace."""
        with workspace.connect() as db:
            names = [r[0] for r in db.execute("SELECT name FROM computes ORDER BY name")]
        return [ComputeTarget(workspace, n) for n in names]

    def delete(self):
        """Delete the cluster; refused while a service is deployed to it."""
        with self.workspace.connect(immediate=True) as db:
            users = [r[0] for r in db.execute("SELECT name FROM services WHERE compute=?", (self.name,))]
            if users:
                raise UserError(f"compute {self.name!r} runs service {', '.join(users)}; delete the service first "
                                "(service.delete()).")
            db.execute("DELETE FROM computes WHERE name=?", (self.name,))
