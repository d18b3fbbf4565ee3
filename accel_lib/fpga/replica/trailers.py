"""THE owner of what a replica's answer carries in its trailing metadata (a header on REST): the FPGA's time for
its images, modeled, and the replica's own stages, measured. The front end passes these on; the client reads them."""
from __future__ import annotations

MODELED_DEVICE_US = "accel-modeled-device-us"   # the device stage on the FPGA, µs (modeled: fpga.device.timing)
REPLICA_US = "accel-replica-us"                 # "preprocess=..,device=..,heads=..": the replica's CPU, µs (measured)
PASSED_ON = (MODELED_DEVICE_US, REPLICA_US)     # what the front end passes on, and nothing else of the replica's


def encode_stages(seconds: dict) -> str:
    """The replica's measured stages ({stage: seconds}) as REPLICA_US's value."""
    return ",".join(f"{k}={1e6 * v:.1f}" for k, v in seconds.items())


def decode_stages(text) -> dict:
    """REPLICA_US's value back as {stage: µs}; {} for None."""
    if not text:
        return {}
    return {k: float(v) for k, v in (part.split("=", 1) for part in text.split(","))}
