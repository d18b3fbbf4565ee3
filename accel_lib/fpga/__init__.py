"""The simulated FPGA, in three wings that import one way: ``cluster`` (the simulated AKS cluster) over ``replica``
(the serving process) over ``device`` (what the FPGA computes).

This package imports nothing from the rest of accel_lib. An image's build context carries a copy of the wings a
replica needs (``REPLICA_WINGS``) and serves from that copy alone.
"""

REPLICA_WINGS = ("device", "replica")        # what a replica loads, and all an image's build context carries
