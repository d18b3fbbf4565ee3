"""The workspace folder's layout: where each thing in it lives (``Layout``: every path the workspace's classes
use); the records in ``state.sqlite`` are ``records``'s."""
from __future__ import annotations

from pathlib import Path


class Layout:
    """Where each thing lives in a workspace folder ``root`` (every path the workspace's classes use)."""

    CONFIG_FILE = "config.json"
    STATE_FILE = "state.sqlite"

    def __init__(self, root):
        self.root = Path(root)

    config = property(lambda self: self.root / self.CONFIG_FILE, doc="the workspace's config.json")
    state = property(lambda self: self.root / self.STATE_FILE, doc="the records (state.sqlite)")
    blobs = property(lambda self: self.root / "blobs" / "sha256", doc="the content-addressed blob store")
    pending = property(lambda self: self.root / "pending", doc="notes of work under way (Workspace.pending)")

    def blob(self, digest) -> Path:
        """Where the blob with this sha256 lives."""
        return self.blobs / digest[:2] / digest[2:]

    def image_context(self, name, version) -> Path:
        """The build context of image ``name`` version ``version``."""
        return self.root / "images" / name / str(int(version))

    def compute_dir(self, name) -> Path:
        """The folder of cluster ``name``: its spec, status, endpoints, certificate and the front end's log."""
        return self.root / "computes" / name

    def service_logs(self, name) -> Path:
        """Where the logs of service ``name``'s replicas are kept."""
        return self.root / "services" / name

    def conversion_cache(self, name, version) -> Path:
        """The fp32 graphs converted from model ``name`` version ``version``, kept for its further conversions."""
        return self.root / "cache" / "conversion" / f"{name}.{int(version)}"

    def operation_dir(self, op_id) -> Path:
        """The folder of operation ``op_id``: its log and its working files."""
        return self.root / "operations" / op_id

    def operation_log(self, op_id) -> Path:
        """The log of operation ``op_id`` (what its process prints)."""
        return self.operation_dir(op_id) / "log.txt"

    def operation_work(self, op_id) -> Path:
        """The working folder of operation ``op_id`` (removed when it succeeds)."""
        return self.operation_dir(op_id) / "work"

    def relative(self, path) -> str:
        """``path`` as the records store it: relative to the workspace folder."""
        return Path(path).relative_to(self.root).as_posix()

    def resolve(self, rel) -> Path:
        """A path the records store, made absolute."""
        return self.root / rel
