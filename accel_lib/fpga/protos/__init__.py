"""TensorFlow Serving's protocol, the subset a replica answers, compiled from this folder's .proto files.

Never import these modules into a process that also imports ``tensorflow_serving`` or ``tensorflow``: the message
names are theirs, and one process holds one definition of each.
"""
