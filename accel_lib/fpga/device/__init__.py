"""The device wing: what the simulated FPGA computes. Numeric formats, the fused quantizer kernel, the device graph
and its reference, host preprocessing, the accelerator package and its manifest; it imports nothing above it."""
