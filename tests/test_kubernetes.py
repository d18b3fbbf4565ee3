"""Kubernetes manifests for a service validate offline against the Kubernetes schema."""
import re

import kubernetes_validate
import pytest
import yaml

from accel_lib import kubernetes
from accel_lib.fpga.cluster import specs

K8S = "1.33.0"


def _service(name, replicas, keys=(), **config):
    """A service as deployment.service_spec gives it."""
    return specs.ServiceSpec(name=name, context="/ws/images/i/1", log_dir="/ws/services/" + name,
                               replicas=[specs.ReplicaSpec(idx=i, node=i) for i in range(replicas)],
                               config=specs.ServiceConfig(num_replicas=replicas, **config),
                               settled=specs.Settled(generation=1, runtime="process"), keys=list(keys))


def _validate(doc):
    kubernetes_validate.validate(doc, K8S, strict=True)


def test_manifests_validate_and_carry_the_fpga_probes_and_keys(tmp_path):
    docs = kubernetes.manifests(_service("my-aks-service", 2, keys=["k1", "k2"], flash_seconds=1.5),
                                "ws.azurecr.local/resnet50-image:1")
    paths = kubernetes.write(docs, tmp_path / "k8s")
    assert [p.name for p in paths] == ["00-secret.yaml", "01-deployment.yaml", "02-service.yaml"]
    assert not [p.name for p in paths if re.search(r"[&*]id\d", p.read_text())], "a YAML anchor or alias"
    loaded = [yaml.safe_load(p.read_text()) for p in paths]
    for doc in loaded:
        _validate(doc)
    secret, deployment, service = loaded
    assert secret["stringData"]["keys"] == "k1\nk2\n"
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"]["limits"][kubernetes.FPGA_RESOURCE] == "1"          # one FPGA per replica
    assert c["readinessProbe"]["grpc"]["port"] == c["livenessProbe"]["grpc"]["port"] == kubernetes.PORT
    assert c["command"][:3] == ["python3", "-m", "fpga.replica.server"] and "--keys-file" in c["command"]
    assert c["command"][c["command"].index("--flash-seconds") + 1] == "1.5"       # read from the service's spec
    assert pod["volumes"][0]["secret"]["secretName"] == secret["metadata"]["name"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_without_keys_there_is_no_secret():
    docs = kubernetes.manifests(_service("svc", 1), "img:1")
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    assert "--keys-file" not in docs[0]["spec"]["template"]["spec"]["containers"][0]["command"]
    for doc in docs:
        _validate(doc)


def test_the_validator_catches_a_broken_manifest():
    deployment = kubernetes.manifests(_service("svc", 1), "img:1")[0]
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(deployment)


ISVC_NAME = r"[a-z]([-a-z0-9]*[a-z0-9])?"          # KServe's webhook: an InferenceService's name


def _flag(cmd, flag):
    return cmd[cmd.index(flag) + 1]


def test_the_kserve_flavour_is_an_inference_service_with_a_custom_predictor_as_kserve_takes_it(tmp_path):
    import re
    docs = kubernetes.manifests(_service("my-fpga-svc", 2, keys=["k1"]), "ws.azurecr.local/resnet50-image:1",
                                flavour="kserve")
    paths = kubernetes.write(docs, tmp_path / "k8s")
    assert [p.name for p in paths] == ["00-secret.yaml", "01-inferenceservice.yaml"]
    assert not [p.name for p in paths if re.search(r"[&*]id\d", p.read_text())], "a YAML anchor or alias"
    secret, isvc = [yaml.safe_load(p.read_text()) for p in paths]
    _validate(secret)
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    assert re.fullmatch(ISVC_NAME, isvc["metadata"]["name"])
    # two ports: the raw deployment mode (Knative's takes one)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] in ("RawDeployment", "Standard")
    pred = isvc["spec"]["predictor"]
    assert pred["minReplicas"] == pred["maxReplicas"] == 2                  # the service's replicas, fixed
    (c,) = pred["containers"]
    assert c["name"] == "kserve-container"
    assert [e["value"] for e in c["env"] if e["name"] == "PROTOCOL"] == ["v2"]
    http, grpc_port = c["ports"]                            # the first is HTTP: the Service's port 80 leads to it
    assert "h2c" in grpc_port["name"] and not {"h2c", "grpc"} & set(re.split("[-_]", http["name"]))
    assert str(grpc_port["containerPort"]) == _flag(c["command"], "--port")
    assert str(http["containerPort"]) == _flag(c["command"], "--rest-port")
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": http["containerPort"]}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": http["containerPort"]}
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["resources"]["limits"][kubernetes.FPGA_RESOURCE] == "1"
    assert pred["volumes"][0]["secret"]["secretName"] == secret["metadata"]["name"]
    assert _flag(c["command"], "--keys-file").startswith(c["volumeMounts"][0]["mountPath"] + "/")
    # the predictor is a Kubernetes pod spec: the Pod KServe makes of it validates as one
    pod = kubernetes.predictor_pod(isvc)
    _validate(pod)
    assert pod["spec"]["containers"] == pred["containers"] and pod["metadata"]["name"] == "my-fpga-svc-predictor"


def test_an_unknown_flavour_is_refused():
    from accel_lib import UserError
    with pytest.raises(UserError, match=r"flavour must be one of \('deployment', 'kserve'\), not 'helm'"):
        kubernetes.manifests(_service("svc", 1), "img:1", flavour="helm")
