"""podman's Kubernetes runner, as this project calls it: ``kube play`` and ``kube down`` on Kubernetes YAML, and the
pods, their containers and the secrets they make. The engine's other command lines are in ``containers``."""
from __future__ import annotations

from .containers import EngineError, _run, engine_name

KUBE_TIMEOUT = 300                                         # `kube play`: creating the pods and starting them


def kube_play(engine, path, timeout=KUBE_TIMEOUT) -> str:
    """Run the Kubernetes YAML at ``path`` on real containers (``podman kube play``: Pods and Deployments, each
    replica a pod; docker has no such command); returns what podman printed. EngineError when it refuses."""
    if engine_name(engine) != "podman":
        raise EngineError(f"{engine_name(engine)} cannot run Kubernetes YAML: `podman kube play` does (install podman)")
    r = _run([engine, "kube", "play", str(path)], timeout=timeout, check=False)
    if r.returncode:
        lines = (r.stderr or r.stdout).strip().splitlines()     # a panic: its first lines name where it failed
        raise EngineError(f"{engine_name(engine)} kube play failed (exit {r.returncode}): "
                          + "\n".join(lines[:6] if lines and lines[0].startswith("panic") else lines[-6:]))
    return r.stdout


def kube_down(engine, path):
    """Stop and remove what ``kube_play`` made from the YAML at ``path`` (a no-op when it is gone)."""
    _run([engine, "kube", "down", str(path)], timeout=120, check=False)


def remove_secret(engine, name):
    """Remove the engine's secret ``name`` (a no-op when it is gone)."""
    _run([engine, "secret", "rm", name], check=False)


def secrets(engine) -> list[str]:
    """The names of the engine's secrets (podman)."""
    r = _run([engine, "secret", "ls", "--format", "{{.Name}}"], check=False)
    return r.stdout.split() if r.returncode == 0 else []


def pod_containers(engine, pod) -> dict:
    """The containers of pod ``pod`` but its infra container: {name: {"state", "pid", "restarts"}}."""
    r = _run([engine, "ps", "-a", "--filter", f"pod={pod}", "--format", "{{.Names}}"], check=False)
    out = {}
    for name in r.stdout.split():
        i = _run([engine, "inspect", "--format", "{{.IsInfra}} {{.State.Status}} {{.State.Pid}} {{.RestartCount}}",
                  name], check=False).stdout.split()
        if len(i) == 4 and i[0] != "true":
            out[name] = {"state": i[1], "pid": int(i[2]), "restarts": int(i[3])}
    return out


def pods(engine, label=None) -> list[str]:
    """The names of the engine's pods (podman), or of those with the label ``label`` ("k=v")."""
    r = _run([engine, "pod", "ps", *(["--filter", f"label={label}"] if label else []), "--format", "{{.Name}}"],
             check=False)
    return r.stdout.split() if r.returncode == 0 else []


def remove_pod(engine, name):
    """Remove pod ``name`` and its containers, running or not (a no-op when it is gone)."""
    _run([engine, "pod", "rm", "-f", "-t", "2", name], check=False, timeout=120)
