"""Kubernetes manifests for a deployed service: what a real cluster with FPGA nodes would run for its image.

A Deployment (the replicas, the FPGA as the extended resource ``microsoft.com/fpga``, start-up, readiness and
liveness by gRPC health, the keys mounted from a Secret), a Service in front of it, and the Secret; or, flavour
"kserve", a KServe InferenceService with the same container as its custom predictor. Nothing here talks to a
cluster: ``kubectl apply -f <folder>`` does, once the image is built and pushed (see the README). ``play`` runs
them, unchanged, on this machine's containers with podman's Kubernetes runner (``podman kube play``: one node, no
scheduler, no Service, probes that gate nothing, ``microsoft.com/fpga`` not enforced).
"""
from __future__ import annotations

from pathlib import Path

from .fpga.cluster import containers
from .fpga.replica import server

FPGA_RESOURCE = "microsoft.com/fpga"
PORT = containers.PORT
KEYS_DIR = "/etc/accel-keys"
KEYS_FILE = "keys"


FLAVOURS = ("deployment", "kserve")
# KServe's rules for a custom predictor (its webhook and controller): the serving container is named
# kserve-container; PROTOCOL says which protocol it speaks (v1 or v2); a port whose name holds "h2c" (or "grpc") is
# served as gRPC; the first port is the HTTP one the Service's port 80 leads to. More than one port needs the raw
# deployment mode (Knative takes one), which newer KServe calls "Standard" and still accepts by this name.
KSERVE_API = "serving.kserve.io/v1beta1"
KSERVE_CONTAINER = "kserve-container"
KSERVE_MODE = {"serving.kserve.io/deploymentMode": "RawDeployment"}
REST_PORT = containers.REST_PORT
MANAGED_BY = ("app.kubernetes.io/managed-by", "accel_lib")     # the label on everything the manifests make
MANAGED_LABEL = "=".join(MANAGED_BY)                            # ... as a label selector


def manifests(svc, image, cpus=6, flavour="deployment"):
    """The manifests of service ``svc`` (a ``cluster.ServiceSpec``, as ``deployment.service_spec`` gives it) running
    container ``image``, as dicts, in the order to apply them: with ``flavour`` "deployment", a Deployment and a
    Service; with "kserve", a KServe InferenceService with a custom predictor; either way first the Secret of its
    keys, if it has any."""
    from .errors import UserError
    if flavour not in FLAVOURS:
        raise UserError(f"flavour must be one of {FLAVOURS}, not {flavour!r}.")
    name, keys = svc.name, svc.keys
    labels = {"app": name, MANAGED_BY[0]: MANAGED_BY[1]}
    kserve = flavour == "kserve"
    cmd = server.command(containers.PYTHON, svc, host="0.0.0.0", port=PORT, threads=cpus,
                         rest_port=REST_PORT if kserve else None,
                         keys_file=f"{KEYS_DIR}/{KEYS_FILE}" if keys else None)
    if kserve:              # KServe's probes are HTTP: the protocol's own health routes
        ports = [{"name": "http1", "containerPort": REST_PORT, "protocol": "TCP"},
                 {"name": "h2c", "containerPort": PORT, "protocol": "TCP"}]

        def probe(what):
            return {"httpGet": {"path": f"/v2/health/{what}", "port": REST_PORT}}
    else:
        ports = [{"name": "grpc", "containerPort": PORT}]

        def probe(what):            # a fresh dict each time: one written twice would become a YAML anchor
            return {"grpc": {"port": PORT}}
    container = {
        "name": KSERVE_CONTAINER if kserve else "replica", "image": image, "workingDir": containers.APP,
        "command": cmd, **({"env": [{"name": "PROTOCOL", "value": "v2"}]} if kserve else {}), "ports": ports,
        "resources": {"limits": {FPGA_RESOURCE: "1", "cpu": str(cpus)}, "requests": {FPGA_RESOURCE: "1"}},
        # flashing the FPGA takes time: the start-up probe waits for it before liveness counts
        "startupProbe": {**probe("ready"), "periodSeconds": 2, "failureThreshold": 60},
        "readinessProbe": {**probe("ready"), "periodSeconds": 2},
        "livenessProbe": {**probe("live"), "periodSeconds": 10, "failureThreshold": 3},
    }
    pod = {"containers": [container]}
    out = []
    if keys:
        secret = f"{name}-keys"
        out.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": secret, "labels": dict(labels)},
                    "stringData": {KEYS_FILE: "\n".join(keys) + "\n"}})
        container["volumeMounts"] = [{"name": "keys", "mountPath": KEYS_DIR, "readOnly": True}]
        pod["volumes"] = [{"name": "keys", "secret": {"secretName": secret, "defaultMode": 0o400}}]
    n = len(svc.replicas)
    if kserve:
        out.append({"apiVersion": KSERVE_API, "kind": "InferenceService",
                    "metadata": {"name": name, "labels": dict(labels), "annotations": dict(KSERVE_MODE)},
                    "spec": {"predictor": {"minReplicas": n, "maxReplicas": n, **pod}}})
        return out
    out.append({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": dict(labels)},
                "spec": {"replicas": n, "selector": {"matchLabels": {"app": name}},
                         "template": {"metadata": {"labels": dict(labels)}, "spec": pod}}})
    out.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": dict(labels)},
                "spec": {"selector": {"app": name}, "ports": [{"name": "grpc", "port": PORT, "targetPort": "grpc"}]}})
    return out


def predictor_pod(isvc) -> dict:
    """The Pod KServe's controller runs for an InferenceService's custom predictor (one replica of it): the
    predictor's pod spec as it is, named ``<name>-predictor``, labelled with the InferenceService's labels."""
    spec = {k: v for k, v in isvc["spec"]["predictor"].items() if k not in ("minReplicas", "maxReplicas")}
    meta = isvc["metadata"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{meta['name']}-predictor", "labels": dict(meta["labels"])},
            "spec": {**spec, "restartPolicy": "Always"}}


def write(docs, folder):
    """Write each manifest as ``<kind>.yaml`` into ``folder``; returns the paths, in the order to apply them. The
    Secret, which holds the keys, is created 0600."""
    import yaml

    from .fpga.cluster.specs import write_private
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, doc in enumerate(docs):
        p = folder / f"{i:02d}-{doc['kind'].lower()}.yaml"
        text = yaml.safe_dump(doc, sort_keys=False)
        if doc["kind"] == "Secret":
            write_private(p, text.encode())
        else:
            p.write_text(text)
        paths.append(p)
    return paths


PLAYED = ("Secret", "Pod", "Deployment")     # the kinds podman's Kubernetes runner takes; a Service is a cluster's
PLAY_FILE = "play.yaml"


def play(paths, folder, engine=None) -> Path:
    """Run the manifests at ``paths`` (as ``write`` gives them) on real containers with ``podman kube play``: their
    Secrets, Pods and Deployments, unchanged, and an InferenceService as the Pod KServe would make of its predictor
    (``predictor_pod``), in one file ``folder/play.yaml`` (0600: it holds the keys); returns it, for ``down``. A runner that fails stops here, its message in an EngineError, with nothing left running."""
    import yaml

    from .fpga.cluster import containers, podman
    from .fpga.cluster.specs import write_private
    engine = engine or _podman()
    docs = [yaml.safe_load(Path(p).read_text()) for p in paths]
    docs = [predictor_pod(d) if d["kind"] == "InferenceService" else d for d in docs]
    docs = [d for d in docs if d["kind"] in PLAYED]
    if not any(d["kind"] != "Secret" for d in docs):
        from .errors import UserError
        raise UserError(f"nothing to run among {[Path(p).name for p in paths]}: podman kube play runs "
                        f"{', '.join(PLAYED)}, and an InferenceService runs as its predictor's Pod.")
    target = Path(folder) / PLAY_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    write_private(target, yaml.safe_dump_all(docs, sort_keys=False).encode())
    try:
        podman.kube_play(engine, target)
    except containers.EngineError:
        down(target, engine)
        raise
    return target


def down(played, engine=None):
    """Remove what ``play`` made from ``played``: its pods and containers (``podman kube down``, then any pod of
    its apps that podman 4.3's ``kube down`` stops short of: it gives up at the first replica it cannot find), and
    the secrets it stored, which that ``kube down`` leaves."""
    import yaml

    from .fpga.cluster import podman
    engine = engine or _podman()
    podman.kube_down(engine, played)
    for doc in yaml.safe_load_all(Path(played).read_text()):
        if not doc:
            continue
        if doc["kind"] == "Secret":
            podman.remove_secret(engine, doc["metadata"]["name"])
        else:
            for pod in podman.pods(engine, label=f"app={doc['metadata']['labels']['app']}"):
                podman.remove_pod(engine, pod)


def _podman():
    from .fpga.cluster import containers
    engine, why = containers.find_engine("podman")
    if engine is None:
        raise containers.EngineError(f"running manifests needs podman ({why})")
    return engine
