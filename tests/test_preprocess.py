"""preprocess_array (TensorFlow) against an independent numpy/Pillow reference, on images the tests generate."""
import io

import numpy as np
import pytest
from PIL import Image

from accel_lib import UserError, samples
from accel_lib.fpga.device import host

MEANS = np.array([123.68, 116.779, 103.939], np.float32)


def _interp_matrix(n_in, n_out):
    """Bilinear weights as a dense [n_out, n_in] matrix, half-pixel centres, edges clamped."""
    m = np.zeros((n_out, n_in), np.float64)
    for o in range(n_out):
        s = (o + 0.5) * n_in / n_out - 0.5
        s = max(s, 0.0)
        i0 = min(int(np.floor(s)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        f = s - np.floor(s)
        m[o, i0] += 1 - f
        m[o, i1] += f
    return m


def reference(data, size=224, order="RGB", scale=1.0, keep_aspect=True):
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.float64)
    h, w = rgb.shape[:2]
    if keep_aspect:
        side = round(size * 256 / 224)
        nh, nw = (side, int(np.floor(w * side / h + 0.5))) if h <= w else (int(np.floor(h * side / w + 0.5)), side)
    else:
        nh, nw = size, size
    out = np.einsum("oh,hwc->owc", _interp_matrix(h, nh), rgb)
    out = np.einsum("pw,owc->opc", _interp_matrix(w, nw), out)
    oy, ox = (nh - size) // 2, (nw - size) // 2
    out = out[oy:oy + size, ox:ox + size] - MEANS
    if order == "BGR":
        out = out[..., ::-1]
    return out * scale


@pytest.mark.parametrize("order", ["RGB", "BGR"])
@pytest.mark.parametrize("keep_aspect", [True, False])
def test_preprocess_array_matches_reference(order, keep_aspect):
    import tensorflow as tf

    from accel_lib.models.utils import preprocess_array
    imgs = [samples.encode(samples.synthetic_image(1, 300, 400), "JPEG"),
            samples.encode(samples.synthetic_image(2, 500, 260), "PNG"),
            samples.encode(samples.synthetic_image(3, 224, 224), "JPEG")]
    got = preprocess_array(tf.constant(imgs), order=order, scaling_factor=0.5,
                           preserve_aspect_ratio=keep_aspect).numpy()
    assert got.shape == (3, 224, 224, 3) and got.dtype == np.float32
    for g, data in zip(got, imgs):
        np.testing.assert_allclose(g, reference(data, order=order, scale=0.5, keep_aspect=keep_aspect), atol=5e-3)


def test_graph_mode_and_host_stage_agree_with_eager():
    import tensorflow as tf

    from accel_lib.models.utils import preprocess_array
    imgs = samples.sample_images(4, seed=5)
    f = tf.function(lambda x: preprocess_array(x, output_height=96, output_width=96))
    graph = f(tf.constant(imgs)).numpy()
    eager = preprocess_array(tf.constant(imgs), output_height=96, output_width=96).numpy()
    np.testing.assert_array_equal(graph, eager)
    np.testing.assert_allclose(host.preprocess(imgs, output_height=96, output_width=96), eager, atol=1e-4)


def test_shortest_side_is_256_and_crop_is_centred():
    # a left/right split image: the centre crop of a wide picture keeps both halves equally
    img = np.zeros((256, 512, 3), np.uint8)
    img[:, 256:] = 255
    x = host.preprocess([samples.encode(img, "PNG")])[0] + MEANS
    assert x.shape == (224, 224, 3)
    assert np.allclose(x[:, :100], 0) and np.allclose(x[:, 124:], 255)
    assert host.aspect_size(300, 600, 256) == (256, 512) and host.aspect_size(601, 300, 256) == (513, 256)


def test_corrupt_image_error_names_the_item():
    import tensorflow as tf

    from accel_lib.models.utils import preprocess_array
    good = samples.sample_images(1)[0]
    with pytest.raises(UserError, match="image 1 .*could not be decoded"):
        preprocess_array(tf.constant([good, b"not an image at all"]))
    with pytest.raises(host.BadImage, match="image 2 "):
        host.preprocess([good, good, good[:40]])


def test_bad_arguments_are_refused():
    from accel_lib.models.utils import preprocess_array
    with pytest.raises(UserError, match="'RGB' or 'BGR'"):
        preprocess_array([b""], order="rgb")
    with pytest.raises(UserError, match="32 to 1024"):
        preprocess_array([b""], output_height=8)


_PEAK = """
import sys
from accel_lib.fpga.device import host
def kb(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))
data = open(sys.argv[1], "rb").read()
open("/proc/self/clear_refs", "w").write("5")      # the peak (VmHWM) starts again from what is resident now
base = kb("VmRSS")
host.preprocess([data])
print((kb("VmHWM") - base) * 1024)
"""


@pytest.mark.parametrize("mode, fmt", [("RGB", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("L", "JPEG"), ("I;16", "PNG"),
                                       ("RGB", "JPEG")])
def test_the_decode_budget_bounds_the_decoders_real_peak(mode, fmt, tmp_path):
    """max_request_mb counts DECODED_BYTES_PER_PIXEL for each pixel: the decoder's peak resident memory (Linux's
    VmHWM, reset just before) stays within it."""
    import subprocess
    import sys
    side = 3000
    path = tmp_path / f"picture.{fmt.lower()}"
    Image.new(mode, (side, side), 100 if mode in ("L", "I;16") else (10, 200, 30, 9)[:len(mode)]).save(path, fmt)
    r = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    peak = int(r.stdout.split()[-1])
    assert peak <= host.DECODED_BYTES_PER_PIXEL * side * side, (mode, fmt, peak / side ** 2)
