"""The cluster wing: the simulated AKS cluster around the replicas. Its files (``state``), the front end, routing,
ingress, the supervisor, lifecycle, certificates and the container engine; it imports the replica and device wings."""
