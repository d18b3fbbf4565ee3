"""An MLServer custom runtime of ours: the accelerator package served by MLServer (Seldon's Open Inference Protocol
server), for the peer benchmark (benchmarks/peers.py). It calls the same AcceleratorPackage as our replicas do, from
an image's build context on PYTHONPATH (the ``fpga`` package), so the two servers differ only in how they serve."""
import base64

import numpy as np
from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput


class AcceleratorRuntime(MLModel):
    """One accelerator package: BYTES images in (raw, or base64 strings with content_type "base64"), FP32 out."""

    async def load(self) -> bool:
        from fpga.device.package import AcceleratorPackage
        extra = self.settings.parameters.extra or {}
        self._pkg = AcceleratorPackage(self.settings.parameters.uri, threads=int(extra.get("threads", 0)),
                                       spinning=False)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if len(payload.inputs) != 1 or payload.inputs[0].datatype != "BYTES":
            raise ValueError("send one BYTES input: the encoded JPEG/PNG images")
        tensor = payload.inputs[0]
        b64 = (tensor.parameters and tensor.parameters.content_type == "base64")
        items = tensor.data.root if hasattr(tensor.data, "root") else tensor.data.__root__
        images = [base64.b64decode(v) if b64 else (v.encode() if isinstance(v, str) else bytes(v)) for v in items]
        names = [o.name for o in payload.outputs or []] or None
        result = self._pkg.run(images, names)
        outputs = []
        for name, value in result.items():
            arr = np.ascontiguousarray(value, np.float32)
            outputs.append(ResponseOutput(name=name, shape=list(arr.shape), datatype="FP32", data=arr.ravel().tolist()))
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=outputs)
