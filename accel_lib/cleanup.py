"""Clean up, the article's last step: delete what a tutorial made, in the article's order (service, compute, image,
models), so that nothing is refused for being in use and nothing is left behind."""
from __future__ import annotations


def clean_up(ws, services=(), computes=(), images=(), models=()) -> dict:
    """Delete the named services, then computes, then images (every version), then models with their conversions
    ('<name>.<v>.accelonnx', every version); what does not exist is skipped, so running it twice is harmless.
    Returns what was deleted, by kind."""
    from .compute import ComputeTarget
    from .image import Image
    from .model import CONVERTED_SUFFIX, Model, of_family
    from .webservice import Webservice
    gone = {"services": [], "computes": [], "images": [], "models": []}
    for s in Webservice.list(ws):
        if s.name in services:
            s.delete()
            gone["services"].append(s.name)
    for c in ComputeTarget.list(ws):
        if c.name in computes:
            c.delete()
            gone["computes"].append(c.name)
    for i in Image.list(ws):
        if i.name in images:
            i.delete()
            gone["images"].append(i.id)
    family = [m for m in Model.list(ws) if any(of_family(n, m.name) for n in models)]
    for m in sorted(family, key=lambda m: m.name.endswith(CONVERTED_SUFFIX), reverse=True):   # conversions first
        m.delete()
        gone["models"].append(m.id)
    return gone


def what_is_left(ws) -> dict:
    """What the workspace still holds, by kind: service, compute and image names, model ids."""
    from .compute import ComputeTarget
    from .image import Image
    from .model import Model
    from .webservice import Webservice
    return {"services": [s.name for s in Webservice.list(ws)], "computes": [c.name for c in ComputeTarget.list(ws)],
            "images": [i.id for i in Image.list(ws)], "models": [m.id for m in Model.list(ws)]}
