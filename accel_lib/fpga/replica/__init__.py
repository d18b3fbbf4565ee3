"""The replica wing: the process that serves one device. The gRPC and REST server, its keys, limits and log lines,
and the protocol codecs (TF Serving, the Open Inference Protocol, tensors); it imports only the device wing."""
