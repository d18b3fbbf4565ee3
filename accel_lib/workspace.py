"""Workspace: a local folder that stands in for an Azure ML workspace.

The folder holds ``config.json`` (name, subscription_id, resource_group, location), the state in
``state.sqlite`` and every artifact in a content-addressed blob store (``blobs/sha256/..``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

from .errors import UserError

CONFIG_FILE = "config.json"
STATE_FILE = "state.sqlite"
LOCATIONS = ("eastus", "southeastasia", "westeurope", "westus2")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT NOT NULL, version INTEGER NOT NULL, description TEXT, tags TEXT NOT NULL,
    properties TEXT NOT NULL, created_time TEXT NOT NULL, files TEXT NOT NULL, kind TEXT NOT NULL,
    PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS operations (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, log TEXT NOT NULL,
    request TEXT NOT NULL, result TEXT, error TEXT, pid INTEGER, created_time TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    name TEXT NOT NULL, version INTEGER NOT NULL, model_name TEXT NOT NULL, model_version INTEGER NOT NULL,
    description TEXT, tags TEXT NOT NULL, properties TEXT NOT NULL, creation_state TEXT NOT NULL,
    context TEXT NOT NULL, created_time TEXT NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS computes (
    name TEXT PRIMARY KEY, vm_size TEXT NOT NULL, agent_count INTEGER NOT NULL, location TEXT NOT NULL,
    kind TEXT NOT NULL, provisioning_state TEXT NOT NULL, provisioning_errors TEXT, created_time TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS services (
    name TEXT PRIMARY KEY, image_name TEXT NOT NULL, image_version INTEGER NOT NULL, compute TEXT NOT NULL,
    config TEXT NOT NULL, state TEXT NOT NULL, keys TEXT, error TEXT, created_time TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS replicas (
    service TEXT NOT NULL, idx INTEGER NOT NULL, compute TEXT NOT NULL, fpga INTEGER NOT NULL,
    pid INTEGER, port INTEGER, log TEXT, PRIMARY KEY (service, idx), UNIQUE (compute, fpga));
"""


def _now() -> str:
    import datetime as _dt
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Workspace:
    """A workspace: ``Workspace.create(...)`` makes one, ``Workspace.from_config()`` finds one."""

    def __init__(self, path, *, _config: dict | None = None):
        self.path = Path(path).resolve()
        cfg = _config or json.loads((self.path / CONFIG_FILE).read_text())
        self.name = cfg["name"]
        self.subscription_id = cfg["subscription_id"]
        self.resource_group = cfg["resource_group"]
        self.location = cfg["location"]
        self.fpga_quota_vcpus = int(cfg.get("fpga_quota_vcpus", 12))
        db = sqlite3.connect(self.path / STATE_FILE, timeout=60)
        try:
            db.execute("PRAGMA busy_timeout = 60000")
            db.executescript(_SCHEMA)
        finally:
            db.close()

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def create(cls, name, subscription_id="00000000-0000-0000-0000-000000000000", resource_group="accel-rg",
               location="eastus", path=None, exist_ok=True, fpga_quota_vcpus=12):
        """Create (or, with exist_ok, reopen) the workspace folder ``path`` (default ``./<name>``)."""
        if location not in LOCATIONS:
            raise UserError(f"location {location!r} has no FPGA VMs; choose one of {', '.join(LOCATIONS)}.")
        folder = Path(path if path is not None else name)
        cfg_path = folder / CONFIG_FILE
        if cfg_path.exists():
            if not exist_ok:
                raise UserError(f"a workspace already exists in {folder}; pass exist_ok=True to reuse it.")
            return cls(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg = {"name": name, "subscription_id": subscription_id, "resource_group": resource_group,
               "location": location, "fpga_quota_vcpus": int(fpga_quota_vcpus)}
        _atomic_write(cfg_path, json.dumps(cfg, indent=2) + "\n")
        return cls(folder)

    @classmethod
    def from_config(cls, path=None):
        """Find config.json (or .azureml/config.json) in ``path`` (default: cwd) or its parents."""
        start = Path(path if path is not None else os.getcwd()).resolve()
        if start.is_file():
            return cls(start.parent)
        for d in (start, *start.parents):
            for cand in (d / CONFIG_FILE, d / ".azureml" / CONFIG_FILE):
                if cand.is_file():
                    cfg = json.loads(cand.read_text())
                    if {"name", "subscription_id", "resource_group"} <= cfg.keys():
                        folder = cand.parent.parent if cand.parent.name == ".azureml" else cand.parent
                        if "workspace_path" in cfg:        # a config written elsewhere by write_config()
                            folder = Path(cfg["workspace_path"])
                            if not (folder / STATE_FILE).exists():
                                raise UserError(f"{cand} points to the workspace {folder}, which no longer exists; "
                                                "create it again or remove the stale config.")
                        cfg.setdefault("location", "eastus")
                        return cls(folder, _config=cfg)
        raise UserError(f"no workspace config.json found in {start} or its parents; "
                        "create one with Workspace.create(name, path=...) or write_config().")

    def write_config(self, path=None, file_name=CONFIG_FILE):
        """Write this workspace's config to ``path`` (a folder; default the workspace) so from_config finds it."""
        folder = Path(path) if path is not None else self.path
        folder.mkdir(parents=True, exist_ok=True)
        cfg = {"name": self.name, "subscription_id": self.subscription_id,
               "resource_group": self.resource_group, "location": self.location,
               "fpga_quota_vcpus": self.fpga_quota_vcpus}
        if folder.resolve() != self.path:
            cfg["workspace_path"] = str(self.path)
        _atomic_write(folder / file_name, json.dumps(cfg, indent=2) + "\n")
        return folder / file_name

    def __repr__(self):
        return f"Workspace(name={self.name!r}, location={self.location!r}, path={str(self.path)!r})"

    # -- state --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def connect(self, immediate=False):
        """A SQLite connection to the workspace state; ``immediate`` takes the write lock at once."""
        db = sqlite3.connect(self.path / STATE_FILE, timeout=60, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA busy_timeout = 60000")
            db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    # -- blobs --------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        """Where the blob with this sha256 lives."""
        return self.path / "blobs" / "sha256" / digest[:2] / digest[2:]

    def put_blob(self, src: Path) -> str:
        """Copy a file into the blob store (idempotent) and return its sha256."""
        digest = sha256_file(src)
        dst = self.blob_path(digest)
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=".tmp-")
            os.close(fd)
            shutil.copyfile(src, tmp)
            if sha256_file(Path(tmp)) != digest:
                os.unlink(tmp)
                raise OSError(f"{src} changed while it was being copied; register it again.")
            os.replace(tmp, dst)
        return digest

    def conversion_cache(self, name, version) -> Path:
        """Where the fp32 graphs converted from model ``name`` version ``version`` are kept for its further
        conversions (removed with the model)."""
        return self.path / "cache" / "conversion" / f"{name}.{int(version)}"

    def scratch(self, *parts) -> Path:
        """A folder inside the workspace for a stage's working files."""
        d = self.path.joinpath(*parts)
        d.mkdir(parents=True, exist_ok=True)
        return d


def _atomic_write(path: Path, text: str):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
