"""Two processes deploy and delete services on one cluster at once: the records and the running cluster agree."""
import subprocess
import sys
import textwrap

import pytest

from accel_lib import AksCompute, ComputeTarget, Webservice
from accel_lib.fpga.cluster import specs as cluster_files

ROUNDS = 20

_WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from accel_lib import AksWebservice, ComputeTarget, Image, Webservice, Workspace
    ws = Workspace(Path(sys.argv[1]))
    name, version = sys.argv[3].split(":")
    target, image, me = ComputeTarget(ws, sys.argv[2]), Image(ws, name, int(version)), sys.argv[4]
    cfg = AksWebservice.deploy_configuration(flash_seconds=0.0, auth_enabled=False)
    print("ready", flush=True)
    for line in sys.stdin:
        verb, n = line.split()
        svc = f"{me}-{n}"
        if verb == "deploy":
            Webservice.deploy_from_image(ws, svc, image, cfg, target).wait_for_deployment(timeout=120)
        else:
            Webservice(ws, svc).delete()
        print("done", flush=True)
""")


def _ask(workers, line):
    """Send ``line`` to every worker at once, then wait for each to finish it."""
    for w in workers:
        w.stdin.write(line + "\n")
        w.stdin.flush()
    for w in workers:
        answer = w.stdout.readline().strip()
        assert answer == "done", f"a worker answered {answer!r} to {line!r} (exit {w.poll()})"


def _agree(ws, target, expected):
    """The records, the declared state and what the cluster runs all hold exactly ``expected``."""
    recorded = sorted(s.name for s in Webservice.list(ws) if s.compute_name == target.name)
    declared = sorted(s.name for s in cluster_files.read(cluster_files.ClusterSpec, target.run_dir).services)
    status = cluster_files.read(cluster_files.ClusterStatus, target.run_dir)
    running = sorted(s.name for s in status.services)
    assert recorded == declared == running == sorted(expected), (recorded, declared, running)


@pytest.mark.timeout(300)          # 20 rounds take about a minute on 2 cores
def test_two_processes_deploying_at_once_lose_nothing(built_image):
    ws = built_image.workspace
    target = ComputeTarget.create(ws, "aks-race", AksCompute.provisioning_configuration(agent_count=2))
    workers = []
    try:
        for me in ("p1", "p2"):
            workers.append(subprocess.Popen(
                [sys.executable, "-c", _WORKER, str(ws.path), target.name, built_image.id, me],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for w in workers:
            assert w.stdout.readline().strip() == "ready"
        for n in range(ROUNDS):
            _ask(workers, f"deploy {n}")
            _agree(ws, target, [f"p1-{n}", f"p2-{n}"])
            _ask(workers, f"delete {n}")
            _agree(ws, target, [])
    finally:
        for w in workers:
            w.stdin.close()
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait(10)
        for s in Webservice.list(ws):
            if s.compute_name == "aks-race":
                s.delete()
        target.delete()
