"""Helpers several test modules share (imported as ``helpers``: pytest puts tests/ on the path)."""
from accel_lib import AksWebservice, Webservice


def deploy(img, target, name, **cfg):
    """Deploy ``img`` to ``target`` as ``name`` and wait until it serves; without keys unless the test asks
    (test_keys_are_on_by_default_on_aks checks the default)."""
    cfg.setdefault("auth_enabled", False)
    svc = Webservice.deploy_from_image(img.workspace, name, img, AksWebservice.deploy_configuration(**cfg), target)
    svc.wait_for_deployment(timeout=120)
    return svc
