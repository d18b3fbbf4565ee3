"""Format-aware fine-tuning: the fake quantizer is formats.quantize bit for bit with a straight-through gradient, and
a fine-tuned featurizer's converted package computes what its Keras twin computed."""
import numpy as np
import pytest

from accel_lib.fpga.device import formats
from accel_lib.models import finetune


def _values():
    """Values over 16 binades either way, zeros of both signs, an all-zero block, a NaN and an infinity; and a row
    near 2**-124, whose steps in an 8-bit-exponent format are not normal numbers (the quantizer's other path)."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 5, 4, 300)) * np.exp(rng.uniform(-11, 11, (3, 5, 4, 300)))).astype(np.float32)
    x[0, 0, 0, :6] = [0.0, -0.0, 3e-30, -3e20, 7.0, 7.5]
    x[1, 0, 0, :] = 0
    x[1, 1, 0, 3], x[1, 2, 0, 9] = np.nan, np.inf
    x[2, 0, 0, :] = (rng.standard_normal(300) * 2.0 ** -124).astype(np.float32)
    return x


@pytest.mark.parametrize("name", formats.NAMES[1:])
def test_the_fake_quantizer_is_the_specification_bit_for_bit(name):
    x = _values()
    for axis, block in ((-1, None), (0, 3), (2, 16)):
        fmt = formats.get(name, block)
        want = formats.quantize(x, fmt, axis)
        got = finetune.fake_quantize(x, fmt, axis).numpy()
        # TensorFlow on the CPU reads subnormal inputs as zero and flushes subnormal results (as the device's dot
        # product flushes below 2**-126): only values far below any activation's may differ, and only to zero
        tiny = 2.0 ** -126
        flushed = (want != 0) & (got == 0) & ((np.abs(want) < tiny) | (np.abs(x) < tiny))
        same = (want.view(np.int32) == got.view(np.int32)) | (np.isnan(want) & np.isnan(got)) | flushed
        assert same.all(), (name, axis, block, x[~same][:3], want[~same][:3], got[~same][:3])
        assert not flushed[np.abs(x) > 2.0 ** -100].any()


def test_the_gradient_passes_straight_through():
    import tensorflow as tf
    v = tf.Variable(_values()[2:3, :, :, :64])
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(finetune.fake_quantize(v, "ms-fp9") * tf.range(64, dtype=tf.float32))
    g = tape.gradient(y, v).numpy()
    np.testing.assert_array_equal(g, np.broadcast_to(np.arange(64, dtype=np.float32), g.shape))
    assert finetune.fake_quantize(v, "fp32") is not None and np.array_equal(finetune.fake_quantize(v, None), v)


def test_a_fine_tuned_package_computes_what_its_keras_twin_computed(tmp_path):
    """SmallResnet (batch norm folded by the conversion) fine-tuned a few steps in ms-fp9, then converted: the
    package's features equal the twin's up to summation order (measured: 125-135 dB; one rounding step flipped
    anywhere would show near 60 dB) and every prediction is the same."""
    from accel_lib.fpga.device import host
    from accel_lib.models.small import SmallResnet, pattern_data
    from accel_lib.models.transfer import DeviceFeaturizer
    m = SmallResnet(tmp_path / "models")
    tr_x, tr_y, te_x, _ = pattern_data(8, 6)
    before = m.featurizer.get_layer("stage1_a").kernel.numpy().copy()
    finetune.fine_tune(m, "ms-fp9", tr_x, tr_y, epochs=1, show=False)
    assert not np.array_equal(before, m.featurizer.get_layer("stage1_a").kernel.numpy())
    x = host.preprocess(te_x, order=m.input_order, output_height=m.image_size, output_width=m.image_size)
    twin = finetune.FormatTwin(m.featurizer, "ms-fp9")(x).numpy()
    package = DeviceFeaturizer(m, tmp_path / "package", numeric_format="ms-fp9")(te_x)
    assert formats.sqnr_db(package, twin) > 90
    head = m.get_default_classifier()
    np.testing.assert_array_equal(np.asarray(head(twin)).argmax(-1), np.asarray(head(package)).argmax(-1))


def test_equalization_keeps_the_fp32_answers_and_balances_each_channel(tmp_path):
    """Cross-layer equalization on SqueezeNet 1.1: the fp32 features stay (up to rounding), and a channel's range in
    its producer comes near its range in the consumers (they meet at the geometric mean; the sweeps that follow
    move the consumers a little again)."""
    from accel_lib import samples
    from accel_lib.fpga.device import host
    from accel_lib.models.squeezenet import Squeezenet11
    m = Squeezenet11(tmp_path, weights="imagenet")
    f = m.featurizer

    def imbalance():
        r1 = np.abs(f.get_layer("fire4_squeeze1x1").kernel.numpy()).reshape(-1, 32).max(0)
        r2 = np.maximum(*(np.abs(f.get_layer(f"fire4_expand{k}").kernel.numpy()).transpose(2, 0, 1, 3)
                          .reshape(32, -1).max(1) for k in ("1x1", "3x3")))
        return float(np.abs(np.log(r1 / r2)).max())
    views, _ = samples.photo_views(["coffee"])
    x = host.preprocess(views[:4], order="BGR")
    before, was = f(x).numpy(), imbalance()
    assert finetune.equalize(f) == 2432        # conv1, the eight squeezes and seven fires' expands
    assert formats.sqnr_db(before, f(x).numpy()) > 100
    assert was > 1.0 and imbalance() < 0.25, (was, imbalance())
