"""The simulated FPGA: host preprocessing, device runtime, numeric formats and the gRPC server.

This package imports nothing from the rest of accel_lib, so an image's build context can carry a copy of it
and serve from that copy alone.
"""
