"""The protocols a replica answers, compiled from this folder's .proto files: TensorFlow Serving's (the subset the
seed uses: ``serving_pb2``, ``tensorflow_pb2``) and the Open Inference Protocol (``inference_pb2``).

The message names and field numbers are the protocols' own, so the bytes on the wire are the same. The messages
live in a descriptor pool of their own (``POOL``), not protobuf's default one: a process that has imported
``tensorflow`` or ``tensorflow_serving`` holds their definitions of the same names there, and both can be used side
by side (a message of one converts to the other through its bytes).
"""
from google.protobuf import any_pb2, descriptor_pool, wrappers_pb2

POOL = descriptor_pool.DescriptorPool()
for _dependency in (any_pb2, wrappers_pb2):          # what serving.proto imports, in this pool too
    POOL.AddSerializedFile(_dependency.DESCRIPTOR.serialized_pb)
