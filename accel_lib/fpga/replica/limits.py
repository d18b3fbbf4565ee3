"""What one request to a service may hold: ``ServiceLimits``, each limit's default spelled here and nowhere else, and
the replica's command-line flags that carry them."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..device import host, manifest


def _limit(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class ServiceLimits:
    """What one request to a service may hold; the front end and the replicas check it before doing the work."""
    max_message_mb: float = _limit(64.0, "the most bytes one message may have (gRPC or REST), in MB")
    max_images: int = _limit(64, "the most images (rows) one request may hold")
    max_pixels: int = _limit(host.MAX_PIXELS, "the most pixels one image may have, read from its header before "
                                              "decoding")
    max_request_mb: float = _limit(256.0, "what one request may decode to, in MB: its images' pixels, its tensors' "
                                          "filled-out values, its strings")
    scoring_timeout_ms: int = _limit(60_000, "the most time one call may take at the front end, in ms (Azure ML's "
                                             "scoring_timeout_ms); past it the call fails with DEADLINE_EXCEEDED")

    def validate(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            whole = f.type in (int, "int")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 or (whole and v != int(v)):
                kind = "a whole number" if whole else "a number"
                raise manifest.ManifestError(f"limit {f.name} must be {kind} above 0 ({f.metadata['help']}), "
                                             f"got {v!r}.")
        if self.max_request_mb < self.max_message_mb:
            raise manifest.ManifestError(f"limit max_request_mb ({self.max_request_mb:g}) must be at least "
                                         f"max_message_mb ({self.max_message_mb:g}): a message decodes to no less.")

    @property
    def message_bytes(self) -> int:
        return int(self.max_message_mb * 2**20)

    @property
    def request_bytes(self) -> int:
        return int(self.max_request_mb * 2**20)

    @property
    def scoring_seconds(self) -> float:
        return self.scoring_timeout_ms / 1000

    def flags(self) -> list[str]:
        """The replica's command-line flags for these limits (``add_arguments`` reads them back)."""
        return [a for f in dataclasses.fields(self) for a in (_flag(f.name), str(getattr(self, f.name)))]

    @classmethod
    def add_arguments(cls, parser):
        """Add one flag per limit to an argparse parser, with its default and help."""
        for f in dataclasses.fields(cls):
            parser.add_argument(_flag(f.name), dest=f.name, type=float if f.type in (float, "float") else int,
                                default=f.default, help=f.metadata["help"])

    @classmethod
    def from_args(cls, args) -> "ServiceLimits":
        """The limits an argparse namespace holds (from ``add_arguments``)."""
        lim = cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
        lim.validate()
        return lim


def _flag(name):
    return "--" + name.replace("_", "-")
