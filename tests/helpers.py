"""Helpers several test modules share (imported as ``helpers``: pytest puts tests/ on the path)."""
from accel_lib import AksWebservice, Webservice


def deploy(img, target, name, **cfg):
    """Deploy ``img`` to ``target`` as ``name`` and wait until it serves; without keys unless the test asks
    (test_keys_are_on_by_default_on_aks checks the default)."""
    cfg.setdefault("auth_enabled", False)
    svc = Webservice.deploy_from_image(img.workspace, name, img, AksWebservice.deploy_configuration(**cfg), target)
    svc.wait_for_deployment(timeout=120)
    return svc


def save_keras_h5(layers, path):
    """Write weights in the Keras application file layout (layer_names / weight_names attributes)."""
    import h5py
    with h5py.File(path, "w") as f:
        layers = [l for l in layers if l.weights]
        f.attrs["layer_names"] = [l.name.encode() for l in layers]
        for l in layers:
            g = f.create_group(l.name)
            names = [f"{l.name}/w{i}" for i in range(len(l.weights))]
            g.attrs["weight_names"] = [n.encode() for n in names]
            for n, w in zip(names, l.get_weights()):
                g[n] = w
