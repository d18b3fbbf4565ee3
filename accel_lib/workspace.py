"""Workspace: a local folder that stands in for an Azure ML workspace.

The folder holds ``config.json`` (name, subscription_id, resource_group, location), the state in
``state.sqlite`` and every artifact in a content-addressed blob store (``blobs/sha256/..``). The folder is private
(0700) and the state file 0600: it holds the services' keys. Work that may be interrupted (registering a model,
building an image) notes itself in ``pending/`` while it runs; opening the workspace cleans up after any whose
process is gone (its half-copied and orphaned blobs, an image left "Running").
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from . import records
from .errors import UserError
from .layout import Layout

CONFIG_FILE = Layout.CONFIG_FILE
STATE_FILE = Layout.STATE_FILE
LOCATIONS = ("eastus", "southeastasia", "westeurope", "westus2")


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
        self.layout = Layout(self.path)                              # where everything in it lives
        cfg = _config or json.loads(self.layout.config.read_text())
        self.name = cfg["name"]
        self.subscription_id = cfg["subscription_id"]
        self.resource_group = cfg["resource_group"]
        self.location = cfg["location"]
        self.fpga_quota_vcpus = int(cfg.get("fpga_quota_vcpus", 12))
        self.config_path = None
        records.open_state(self.layout.state)                          # created, or migrated from older
        self._recover()

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
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        cfg = {"name": name, "subscription_id": subscription_id, "resource_group": resource_group,
               "location": location, "fpga_quota_vcpus": int(fpga_quota_vcpus)}
        _atomic_write(cfg_path, json.dumps(cfg, indent=2) + "\n")
        return cls(folder)

    @classmethod
    def from_config(cls, path=None):
        """Find config.json (or .azureml/config.json) in ``path`` (default: cwd), then in its parents, as Azure ML
        does; a config owned by another user is skipped (a folder above yours may be writable by others, /tmp is),
        and one found in a parent folder is named on stderr. ``ws.config_path`` says which one was used."""
        start = Path(path if path is not None else os.getcwd()).resolve()
        if start.is_file():
            ws = cls(start.parent)
            ws.config_path = start
            return ws
        for d in (start, *start.parents):
            for cand in (d / CONFIG_FILE, d / ".azureml" / CONFIG_FILE):
                if cand.is_file():
                    # the file (a link is judged by its own owner, lstat) and what it points to must both be yours
                    if {cand.lstat().st_uid, cand.stat().st_uid} != {os.getuid()}:
                        print(f"Workspace.from_config: skipped {cand}, which another user owns", file=sys.stderr)
                        continue
                    cfg = json.loads(cand.read_text())
                    if {"name", "subscription_id", "resource_group"} <= cfg.keys():
                        folder = cand.parent.parent if cand.parent.name == ".azureml" else cand.parent
                        if "workspace_path" in cfg:        # a config written elsewhere by write_config()
                            folder = Path(cfg["workspace_path"])
                            if not (folder / STATE_FILE).exists():
                                raise UserError(f"{cand} points to the workspace {folder}, which no longer exists; "
                                                "create it again or remove the stale config.")
                        cfg.setdefault("location", "eastus")
                        ws = cls(folder, _config=cfg)
                        ws.config_path = cand
                        if d != start:
                            print(f"Workspace.from_config: using {cand}", file=sys.stderr)
                        return ws
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
    def connect(self, immediate=False):
        """A transaction on the workspace state (``records.transaction``); ``immediate`` takes the write lock at
        once."""
        return records.transaction(self.layout.state, immediate)

    # -- blobs --------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        """Where the blob with this sha256 lives."""
        return self.layout.blob(digest)

    def put_blob(self, src: Path) -> str:
        """Copy a file into the blob store (idempotent) and return its sha256."""
        digest = sha256_file(src)
        dst = self.blob_path(digest)
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".tmp-{os.getpid()}-")
            os.close(fd)
            shutil.copyfile(src, tmp)
            if sha256_file(Path(tmp)) != digest:
                os.unlink(tmp)
                raise OSError(f"{src} changed while it was being copied; register it again.")
            os.replace(tmp, dst)
        return digest

    # -- interrupted work ------------------------------------------------------------------------
    @contextlib.contextmanager
    def pending(self, kind, **what):
        """Note work of ``kind`` ("register" with its blobs' digests, "image" with name and version) under way in
        this process; the note goes when it ends, and a note left by a process that is gone is acted on by the
        next open of the workspace (``_recover``)."""
        folder = self.layout.pending
        folder.mkdir(mode=0o700, exist_ok=True)
        note = folder / f"{kind}-{os.getpid()}-{os.urandom(4).hex()}.json"
        _atomic_write(note, json.dumps({"kind": kind, "pid": os.getpid(), **what}))

        def update(**more):
            what.update(more)
            _atomic_write(note, json.dumps({"kind": kind, "pid": os.getpid(), **what}))
        try:
            yield update
        finally:
            note.unlink(missing_ok=True)

    def _recover(self):
        """Clean up after work whose process is gone: its temporary files, the blobs it copied that no model holds,
        an image it left "Running" (now Failed)."""
        folder = self.layout.pending
        notes = sorted(folder.glob("*.json")) if folder.is_dir() else []
        for tmp in self.layout.blobs.glob("*/.tmp-*"):
            pid = tmp.name.split("-")[1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                tmp.unlink(missing_ok=True)
        for note in notes:
            try:
                info = json.loads(note.read_text())
            except (OSError, ValueError):
                continue
            if _pid_alive(int(info.get("pid", 0))):
                continue
            if info["kind"] == "register":
                with self.connect(immediate=True) as db:
                    held = {d for m in records.find(db, records.ModelRecord) for d in m.files.values()}
                for digest in set(info.get("digests", [])) - held:
                    self.blob_path(digest).unlink(missing_ok=True)
            elif info["kind"] == "image":
                with self.connect(immediate=True) as db:
                    records.set_status(db, records.ImageRecord, {"name": info["name"], "version": info["version"]},
                                       records.FAILED, only_from=(records.RUNNING,))
                log = self.layout.resolve(info.get("log", ""))
                if info.get("log") and log.parent.is_dir():
                    with open(log, "a") as f:
                        f.write(f"FAILED: the build was interrupted (process {info['pid']} ended before it "
                                "finished)\n")
            note.unlink(missing_ok=True)

    def service_folder(self, name) -> Path:
        """Where the logs of service ``name``'s replicas are kept."""
        return self.layout.service_logs(name)

    def conversion_cache(self, name, version) -> Path:
        """Where the fp32 graphs converted from model ``name`` version ``version`` are kept for its further
        conversions (removed with the model)."""
        return self.layout.conversion_cache(name, version)

    def scratch(self, *parts) -> Path:
        """A folder inside the workspace for a stage's working files."""
        d = self.path.joinpath(*parts)
        d.mkdir(parents=True, exist_ok=True)
        return d


def _pid_alive(pid) -> bool:
    """Whether a process with this pid runs (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _atomic_write(path: Path, text: str):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
