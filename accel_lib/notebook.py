"""Helpers the notebooks call, so that their cells hold no logic: the top-k table, the chart, the upload widget."""
from __future__ import annotations

import io

import numpy as np


def top_k(probs, labels, k=5):
    """The ``k`` most likely classes as (index, label, probability), best first."""
    probs = np.asarray(probs).reshape(-1)
    if len(labels) != probs.size:
        raise ValueError(f"{probs.size} scores but {len(labels)} labels: score with the model's classifier output.")
    order = np.argsort(-probs, kind="stable")[:k]
    return [(int(i), labels[i], float(probs[i])) for i in order]


def top_k_chart(image, top, title="top 5", note=""):
    """A figure: the picture (a path or encoded bytes) beside a bar chart of its top-k classes."""
    import matplotlib.pyplot as plt
    from PIL import Image
    src = io.BytesIO(image) if isinstance(image, (bytes, bytearray, memoryview)) else image
    fig, (ax_img, ax_bar) = plt.subplots(1, 2, figsize=(11, 3.5), gridspec_kw={"width_ratios": [1, 1.4]})
    with Image.open(src) as im:
        ax_img.imshow(im.convert("RGB"))
    ax_img.set_axis_off()
    rows = list(top)[::-1]
    ax_bar.barh([label.split(",")[0] for _, label, _ in rows], [p for _, _, p in rows])
    ax_bar.set_xlabel("confidence")
    ax_bar.set_xlim(0, 1)
    ax_bar.set_title(title + (f"  ({note})" if note else ""))
    fig.tight_layout()
    return fig


class UploadScorer:
    """Pick a JPEG or PNG, see it with its top-k as a bar chart. ``score(bytes) -> probabilities`` does the work
    (a deployed service's client, or an in-process package); ``widget`` is what a notebook displays."""

    def __init__(self, score, labels, k=5, note=""):
        import ipywidgets as w
        self.score, self.labels, self.k, self.note = score, labels, k, note
        self.upload = w.FileUpload(accept=".jpg,.jpeg,.png", multiple=False, description="Pick an image")
        self.output = w.Output()
        self.upload.observe(self._changed, names="value")
        self.widget = w.VBox([self.upload, self.output])
        self.last = None            # (file name, top-k rows) of the last image scored

    def _changed(self, change):
        for item in change["new"] or ():
            self.on_upload(bytes(item["content"]), item.get("name", "image"))

    def on_upload(self, data: bytes, name="image"):
        """Score one uploaded file and show it; a file that is not an image shows the reason instead."""
        import matplotlib.pyplot as plt
        from IPython.display import display
        self.output.clear_output()
        with self.output:
            try:
                top = top_k(self.score(data), self.labels, self.k)
            except Exception as e:  # noqa: BLE001 - the reason is shown to the user, the widget stays usable
                self.last = (name, None)
                why = e.details() if hasattr(e, "details") else str(e)      # a gRPC error carries its reason there
                print(f"{name}: could not be scored: {why}")
                return None
            fig = top_k_chart(data, top, f"{name}: top {self.k}", self.note)
            display(fig)
            plt.close(fig)
        self.last = (name, top)
        return top
