"""Image preprocessing as a TensorFlow graph: JPEG/PNG bytes -> the featurizer's input."""
from __future__ import annotations

from ..errors import UserError
from ..fpga.device.host import MEANS_RGB, resize_side_for


def _check(order, output_height, output_width):
    if order not in ("RGB", "BGR"):
        raise UserError(f"order must be 'RGB' or 'BGR', got {order!r}.")
    if not (isinstance(output_height, int) and isinstance(output_width, int)
            and 32 <= output_height <= 1024 and 32 <= output_width <= 1024):
        raise UserError(f"output size must be whole numbers from 32 to 1024, got {output_height}x{output_width}.")


def _one(data, order, scaling_factor, output_height, output_width, preserve_aspect_ratio):
    import tensorflow as tf
    img = tf.cond(tf.io.is_jpeg(data),
                  lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
                  lambda: tf.io.decode_png(data, channels=3))
    img = tf.cast(img, tf.float32)
    if preserve_aspect_ratio:
        side = resize_side_for(output_height, output_width)
        shape = tf.shape(img, out_type=tf.int64)
        h, w = shape[0], shape[1]
        # shortest side -> `side`, the other rounded half up, in integers (same as the numpy host stage)
        nh = tf.where(h <= w, tf.constant(side, tf.int64), (h * side * 2 + w) // (2 * w))
        nw = tf.where(h <= w, (w * side * 2 + h) // (2 * h), tf.constant(side, tf.int64))
        img = tf.image.resize(img, tf.cast(tf.stack([nh, nw]), tf.int32), method="bilinear", antialias=False)
        oy, ox = (nh - output_height) // 2, (nw - output_width) // 2
        img = img[oy:oy + output_height, ox:ox + output_width, :]
    else:
        img = tf.image.resize(img, [output_height, output_width], method="bilinear", antialias=False)
    img = img - tf.constant(MEANS_RGB, tf.float32)
    if order == "BGR":
        img = img[..., ::-1]
    img = img * tf.constant(scaling_factor, tf.float32)
    return tf.ensure_shape(img, [output_height, output_width, 3])


def preprocess_array(images, order="RGB", scaling_factor=1.0, output_height=224, output_width=224,
                     preserve_aspect_ratio=True):
    """Decode a 1-D string tensor of JPEG/PNG images into float32 [N, H, W, 3], mean-subtracted.

    Shortest side resized to 256 (for a 224 crop; in proportion otherwise), centre crop, channel means
    R 123.68 G 116.779 B 103.939 subtracted, channels in ``order``, multiplied by ``scaling_factor``.
    """
    import tensorflow as tf
    _check(order, output_height, output_width)
    images = tf.convert_to_tensor(images, tf.string)
    if images.shape.rank == 0:
        images = tf.reshape(images, [1])
    args = (order, float(scaling_factor), output_height, output_width, bool(preserve_aspect_ratio))
    if tf.executing_eagerly():
        out = []
        for i, data in enumerate(images):
            try:
                out.append(_one(data, *args))
            except tf.errors.InvalidArgumentError as e:
                raise UserError(f"image {i} ({len(data.numpy())} bytes) could not be decoded as JPEG or PNG: "
                                f"{e.message.splitlines()[0]}") from None
        if not out:
            return tf.zeros([0, output_height, output_width, 3], tf.float32)
        return tf.stack(out)
    return tf.map_fn(lambda d: _one(d, *args), images,
                     fn_output_signature=tf.TensorSpec([output_height, output_width, 3], tf.float32))
