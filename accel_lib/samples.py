"""Small images the project generates itself (no data is downloaded): for tutorials, tests and parity checks."""
from __future__ import annotations

import io

import numpy as np


def synthetic_image(seed=0, height=300, width=400) -> np.ndarray:
    """A seeded RGB uint8 picture: a sky-to-ground gradient with a few coloured discs and bars."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (yy / max(height - 1, 1))[..., None]
    img = top * (1 - t) + bottom * t
    for _ in range(rng.integers(3, 7)):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.08, 0.3) * min(height, width)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[mask] = rng.uniform(0, 255, 3)
    for _ in range(rng.integers(1, 4)):
        x0 = int(rng.integers(0, width - 8))
        img[:, x0:x0 + int(rng.integers(4, 24))] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(img: np.ndarray, fmt="JPEG", quality=90) -> bytes:
    """RGB uint8 array -> JPEG or PNG bytes."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def sample_images(n=8, seed=0) -> list[bytes]:
    """``n`` encoded images of varied sizes, aspect ratios and formats (JPEG and PNG)."""
    rng = np.random.default_rng(seed + 1000)
    out = []
    for i in range(n):
        h, w = int(rng.integers(160, 420)), int(rng.integers(160, 420))
        out.append(encode(synthetic_image(seed + i, h, w), "PNG" if i % 3 == 2 else "JPEG"))
    return out


def sample_batch(n=8, image_size=224, order="RGB", seed=0) -> np.ndarray:
    """``n`` generated images preprocessed for the featurizer: float32 [n, size, size, 3]."""
    from .fpga.device.host import preprocess
    return preprocess(sample_images(n, seed), order=order, output_height=image_size, output_width=image_size)


def write_sample_image(path, seed=7, height=360, width=480) -> str:
    """Write a generated JPEG to ``path`` (the tutorial's stand-in for the article's snow leopard)."""
    from pathlib import Path
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(encode(synthetic_image(seed, height, width)))
    return str(path)


PHOTO_CREDIT = "Chelsea the cat: a photograph by Stefan van der Walt (CC0), shipped with scikit-image"


def write_photo(path) -> str:
    """Write the tutorial's sample photograph (a tabby cat, from scikit-image's pictures) to ``path`` as JPEG."""
    from pathlib import Path

    from skimage import data
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(encode(data.chelsea(), "JPEG", quality=95))
    return str(path)


PHOTOS = {   # real photographs that ship in installed packages: name -> (package, credit and licence)
    "chelsea": ("scikit-image", "Chelsea the cat, by Stefan van der Walt (CC0)"),
    "coffee": ("scikit-image", "a coffee cup, by Rachel Michetti (CC0)"),
    "astronaut": ("scikit-image", "the astronaut Eileen Collins, NASA (public domain)"),
    "rocket": ("scikit-image", "DSCOVR's launch on a Falcon 9, SpaceX (public domain)"),
    "hubble_deep_field": ("scikit-image", "the Hubble eXtreme Deep Field, NASA (public domain)"),
    "grace_hopper": ("matplotlib", "Grace Hopper, a U.S. Navy photograph (public domain)"),
}
VIEW_SCALES = (0.9, 0.7, 0.5)             # a view's side, as a fraction of the photograph's
VIEW_PLACES = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5), (0.5, 0.0))   # where, (x, y) in [0, 1]


def photo(name) -> np.ndarray:
    """One of ``PHOTOS`` as RGB uint8 [H, W, 3], read from the package that ships it (no network)."""
    if name not in PHOTOS:
        raise ValueError(f"no photograph {name!r}; there are {sorted(PHOTOS)}")
    if PHOTOS[name][0] == "matplotlib":
        import matplotlib.cbook
        from PIL import Image
        with Image.open(matplotlib.cbook.get_sample_data(f"{name}.jpg")) as im:
            return np.asarray(im.convert("RGB"))
    from skimage import data
    return np.asarray(getattr(data, name)())[..., :3]


def photo_views(names=tuple(PHOTOS)):
    """Views of real photographs, JPEG-encoded: every scale of ``VIEW_SCALES`` at every place of ``VIEW_PLACES``,
    each also mirrored (36 per photograph, 216 for all six). Returns (encoded views, photograph name of each)."""
    views, owners = [], []
    for name in names:
        img = photo(name)
        h, w = img.shape[:2]
        for scale in VIEW_SCALES:
            ch, cw = int(h * scale), int(w * scale)
            for fx, fy in VIEW_PLACES:
                y, x = int((h - ch) * fy), int((w - cw) * fx)
                crop = img[y:y + ch, x:x + cw]
                for view in (crop, crop[:, ::-1]):
                    views.append(encode(np.ascontiguousarray(view), "JPEG", quality=92))
                    owners.append(name)
    return views, owners


DISTILLATION_PICTURES = {   # pictures that teach a narrow-format network its fp32 twin's answers: never PHOTOS
    "brick": ("scikit-image", "a brick wall, CC0Textures (CC0)"),
    "camera": ("scikit-image", "a cameraman, by Lav Varshney (CC0)"),
    "cell": ("scikit-image", "a cell in a microscope, by Schürmann, Guck et al. (CC0)"),
    "clock": ("scikit-image", "a clock in motion, by Stefan van der Walt (public domain)"),
    "coins": ("scikit-image", "Greek coins, Brooklyn Museum (no known copyright restrictions)"),
    "grass": ("scikit-image", "grass, by linolafett (CC0)"),
    "gravel": ("scikit-image", "gravel, CC0Textures (CC0)"),
    "horse": ("scikit-image", "a horse's silhouette, by Andreas Preuss (CC0)"),
    "immunohistochemistry": ("scikit-image", "a stained tissue (no known copyright restrictions)"),
    "microaneurysms": ("scikit-image", "a retina's microaneurysms, by Andreas Maier (CC0)"),
    "retina": ("scikit-image", "a fundus photograph of a normal eye, Wikimedia Commons (CC0)"),
    "text": ("scikit-image", "text on a street corner, Wikipedia (public domain)"),
}
GENERATED_SCENES = 8            # and as many of the project's own scenes (``scene``), seeds 0..7


def distillation_pictures() -> list:
    """``DISTILLATION_PICTURES`` and ``GENERATED_SCENES`` scenes as RGB uint8 arrays (grey ones as three equal
    channels), read from the installed packages: no network, none of the evaluation photographs."""
    from skimage import data
    out = []
    for name in DISTILLATION_PICTURES:
        a = np.asarray(getattr(data, name)())
        if a.dtype != np.uint8:                              # the horse is a boolean mask
            a = (a.astype(np.float32) * (255.0 / max(float(a.max()), 1.0))).astype(np.uint8)
        out.append(np.ascontiguousarray(np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]))
    return out + [scene(seed=s)[0] for s in range(GENERATED_SCENES)]


SHAPE_CLASSES = ("discs", "stripes", "checks", "day", "night", "rings", "squares", "triangles", "crosses", "dots")


def shape_image(kind, seed=0, height=240, width=320) -> np.ndarray:
    """A seeded RGB uint8 picture of one kind, on a random gradient, in a colour that stands out from it: one large
    shape near the centre (``discs``, ``rings``, ``squares``, ``triangles``, ``crosses``: about a third of the
    picture, so that a small network tells them apart at 40 pixels), a texture across the picture (``stripes``,
    ``checks``, ``dots``: random period and orientation), or a ``day`` sky (bright, a sun) or a ``night`` sky
    (dark, stars and a moon) over the ground."""
    if kind not in SHAPE_CLASSES:
        raise ValueError(f"unknown kind {kind!r}; choose from {SHAPE_CLASSES}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = (yy / max(height - 1, 1))[..., None]
    if kind in ("day", "night"):
        return _sky(kind == "day", rng, yy, xx, height, width)
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = top * (1 - t) + bottom * t
    colour = np.clip(255 - (top + bottom) / 2 + rng.uniform(-30, 30, 3), 0, 255)     # contrasting
    if kind == "stripes":
        period = rng.uniform(0.05, 0.12) * min(height, width)
        along = yy if rng.random() < 0.5 else xx
        img[(along % period) < period / 2] = colour
    elif kind == "checks":
        cell = rng.uniform(0.05, 0.12) * min(height, width)
        img[((yy // cell) + (xx // cell)) % 2 == 0] = colour
    elif kind == "dots":
        period = rng.uniform(0.08, 0.14) * min(height, width)
        r = period * rng.uniform(0.18, 0.3)
        dy, dx = (yy % period) - period / 2, (xx % period) - period / 2
        img[dy ** 2 + dx ** 2 < r * r] = colour
    else:                                             # one large shape near the centre
        cy, cx = rng.uniform(0.4, 0.6) * height, rng.uniform(0.4, 0.6) * width
        r = rng.uniform(0.28, 0.4) * min(height, width)
        dy, dx = yy - cy, xx - cx
        d2 = dy ** 2 + dx ** 2
        if kind == "discs":
            mask = d2 < r * r
        elif kind == "rings":
            mask = (d2 < r * r) & (d2 > (0.6 * r) ** 2)
        elif kind == "squares":
            mask = (np.abs(dy) < r * 0.8) & (np.abs(dx) < r * 0.8)
        elif kind == "triangles":
            mask = (dy < r * 0.7) & (dy > -r) & (np.abs(dx) < (dy + r) * 0.6)
        else:                                         # crosses
            w = r * 0.28
            mask = ((np.abs(dy) < w) & (np.abs(dx) < r)) | ((np.abs(dx) < w) & (np.abs(dy) < r))
        img[mask] = colour
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _sky(day, rng, yy, xx, height, width):
    horizon = rng.uniform(0.55, 0.8) * height
    t = (yy / horizon)[..., None]
    if day:
        sky = rng.uniform([60, 120, 180], [170, 210, 255]) * (1 - t) + rng.uniform([170, 190, 200], 255) * t
        ground = rng.uniform([40, 90, 20], [140, 180, 90])
    else:
        sky = rng.uniform(0, [20, 20, 50]) * (1 - t) + rng.uniform(0, [40, 40, 80]) * t
        ground = rng.uniform(0, 35, 3)
    img = np.where((yy < horizon)[..., None], sky, ground)
    cy, cx = rng.uniform(0.1, 0.4) * height, rng.uniform(0.1, 0.9) * width
    r = rng.uniform(0.05, 0.1) * min(height, width)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (255, 235, 120) if day else (230, 230, 210)
    if not day:
        for _ in range(int(rng.integers(30, 90))):
            y, x = int(rng.uniform(0, horizon - 2)), int(rng.uniform(0, width - 2))
            img[y:y + 2, x:x + 2] = rng.uniform(180, 255)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def labelled_images(classes=("day", "night"), per_class=64, seed=0, size=(180, 360)):
    """A labelled image set the project generates: (encoded JPEGs, integer labels), classes interleaved; each
    picture's height and width are drawn from ``size`` (low, high)."""
    rng = np.random.default_rng(seed + 5000)
    images, labels = [], []
    for i in range(per_class):
        for label, kind in enumerate(classes):
            h, w = int(rng.integers(*size)), int(rng.integers(*size))
            images.append(encode(shape_image(kind, seed * 100003 + i * 31 + label, h, w)))
            labels.append(label)
    return images, np.asarray(labels, np.int64)


def image_folder(path):
    """A folder with one subfolder per class of JPEG/PNG files -> (encoded images, labels, class names)."""
    from pathlib import Path
    root = Path(path)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if len(classes) < 2:
        raise ValueError(f"{path} must hold one subfolder per class (at least two), each with JPEG/PNG images.")
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
        images += [f.read_bytes() for f in files]
        labels += [label] * len(files)
    return images, np.asarray(labels, np.int64), classes


SCENE_CLASSES = ("disc", "square", "triangle")


def _object_mask(kind, yy, xx, cy, cx, ry, rx):
    """The pixels of one object of ``kind`` centred at (cy, cx) with half-extents (ry, rx)."""
    dy, dx = (yy - cy) / ry, (xx - cx) / rx
    if kind == "disc":
        return dy ** 2 + dx ** 2 < 1.0
    if kind == "square":
        return (np.abs(dy) < 1.0) & (np.abs(dx) < 1.0)
    if kind == "triangle":                           # apex up, base down
        return (dy < 1.0) & (np.abs(dx) < (dy + 1.0) / 2.0)
    raise ValueError(f"unknown object {kind!r}; choose from {SCENE_CLASSES}")


def scene(seed=0, height=300, width=300, classes=SCENE_CLASSES, objects=(2, 5), sizes=(0.12, 0.45),
          max_overlap=0.25, clutter=True):
    """A seeded scene with known boxes: (RGB uint8 image, boxes float32 [k, 4] as (ymin, xmin, ymax, xmax)
    fractions of the picture, labels int64 [k] from 1 (0 is background)).

    Objects (``classes``; between ``objects[0]`` and ``objects[1]`` of them) vary in size (``sizes``: fractions of
    the shorter side), aspect (0.75-1.33), position and colour, and may overlap (boxes' IoU at most
    ``max_overlap``, each object at least 60% visible; later ones are drawn over earlier ones); the clutter (thin
    lines, small specks, noise) belongs to no class. Each box is the exact extent of the object's pixels.
    ``clutter=False`` leaves out the lines and specks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = ((yy * rng.uniform(0.3, 1.0) + xx * rng.uniform(0.0, 0.7)) / max(height + width, 1))[..., None]
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = top * (1 - 2 * t) + bottom * 2 * t
    for _ in range(int(rng.integers(2, 6)) if clutter else 0):            # clutter: thin lines
        y0, x0, y1, x1 = rng.uniform(0, 1, 4) * (height, width, height, width)
        n = int(max(abs(y1 - y0), abs(x1 - x0))) + 1
        ys, xs = np.linspace(y0, y1, n).astype(int), np.linspace(x0, x1, n).astype(int)
        keep = (ys < height - 1) & (xs < width - 1)
        colour = rng.uniform(0, 255, 3)
        img[ys[keep], xs[keep]] = colour
        img[ys[keep] + 1, xs[keep]] = colour
    for _ in range(int(rng.integers(3, 10)) if clutter else 0):  # clutter: small specks
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(1.5, 0.03 * min(height, width))
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    boxes, labels, areas, visible = [], [], [], []  # each object's pixels: drawn, and still visible
    owner = np.zeros((height, width), np.int64)      # which object each pixel shows (0: none)
    side = min(height, width)
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        for _attempt in range(30):
            size = rng.uniform(*sizes) * side
            aspect = np.exp(rng.uniform(np.log(0.75), np.log(1.33)))
            ry, rx = min(size / 2 * np.sqrt(aspect), 0.49 * height), min(size / 2 / np.sqrt(aspect), 0.49 * width)
            cy, cx = rng.uniform(ry, height - ry), rng.uniform(rx, width - rx)
            label = int(rng.integers(len(classes)))
            mask = _object_mask(classes[label], yy, xx, cy, cx, ry, rx)
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            if len(rows) < 4 or len(cols) < 4:
                continue
            box = np.array([rows[0] / height, cols[0] / width, (rows[-1] + 1) / height, (cols[-1] + 1) / width])
            if boxes and box_iou(box, np.asarray(boxes)).max() > max_overlap:
                continue
            covered = np.bincount(owner[mask], minlength=len(boxes) + 1)[1:]
            if boxes and (np.asarray(visible) - covered < 0.6 * np.asarray(areas)).any():
                continue                                  # each object stays at least 60% visible
            local = img[mask].mean(0)
            colour = rng.uniform(0, 255, 3)
            while np.abs(colour - local).sum() < 150:       # stands out from what it covers
                colour = rng.uniform(0, 255, 3)
            img[mask] = colour
            visible = [v - c for v, c in zip(visible, covered)] + [int(mask.sum())]
            areas.append(int(mask.sum()))
            owner[mask] = len(boxes) + 1
            boxes.append(box)
            labels.append(label + 1)
            break
    img += rng.normal(0, 6, img.shape)
    return (np.clip(img, 0, 255).astype(np.uint8), np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(labels, np.int64))


def box_iou(box, boxes) -> np.ndarray:
    """Intersection over union of one box against many, all as (ymin, xmin, ymax, xmax)."""
    ymin, xmin = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    ymax, xmax = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ymax - ymin, 0, None) * np.clip(xmax - xmin, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def labelled_scenes(n=64, seed=0, classes=SCENE_CLASSES, size=(240, 360), **kwargs):
    """``n`` generated scenes for detection: (encoded JPEGs, one (boxes, classes) per image); each picture's height
    and width are drawn from ``size`` (low, high); other arguments go to ``scene``."""
    from . import progress
    rng = np.random.default_rng(seed + 7000)
    images, truths = [], []
    bar = progress.bar(total=n, desc="generating scenes", unit="scene", show=n > 32)
    for i in range(n):
        h, w = int(rng.integers(*size)), int(rng.integers(*size))
        img, boxes, labels = scene(seed * 100003 + i, h, w, classes, **kwargs)
        images.append(encode(img))
        truths.append((boxes, labels))
        bar.update(1)
    bar.close()
    return images, truths


def labelled_objects(classes=SCENE_CLASSES, per_class=64, seed=0, size=(180, 360), sizes=(0.55, 0.9),
                     clutter=True):
    """A labelled image set of the scenes' objects, one per picture (varied size, aspect, position and colours):
    (encoded JPEGs, integer labels from 0), classes interleaved; each picture's height and width are drawn from
    ``size`` (low, high), the object's size from ``sizes`` (fractions of the shorter side)."""
    from . import progress
    rng = np.random.default_rng(seed + 9000)
    images, labels = [], []
    bar = progress.bar(total=per_class * len(classes), desc="generating pictures", unit="picture",
                       show=per_class * len(classes) > 64)
    for i in range(per_class):
        for label, kind in enumerate(classes):
            h, w = int(rng.integers(*size)), int(rng.integers(*size))
            img, _, _ = scene(seed * 100003 + i * 31 + label, h, w, (kind,), objects=(1, 1), sizes=sizes,
                              clutter=clutter)
            images.append(encode(img))
            labels.append(label)
            bar.update(1)
    bar.close()
    return images, np.asarray(labels, np.int64)


def write_voc_folder(path, images, truths, class_names) -> str:
    """Write encoded images and their (boxes, classes) as a Pascal VOC folder: ``JPEGImages/<n>.jpg`` and
    ``Annotations/<n>.xml`` (pixel boxes, 1-based and inclusive as VOC's are). Returns the folder."""
    import xml.etree.ElementTree as ET
    from pathlib import Path

    from PIL import Image
    root = Path(path)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for i, (data, (boxes, classes)) in enumerate(zip(images, truths)):
        name = f"{i:06d}"
        (root / "JPEGImages" / f"{name}.jpg").write_bytes(data)
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
        ann = ET.Element("annotation")
        ET.SubElement(ann, "filename").text = f"{name}.jpg"
        size = ET.SubElement(ann, "size")
        for tag, v in (("width", w), ("height", h), ("depth", 3)):
            ET.SubElement(size, tag).text = str(v)
        for (y0, x0, y1, x1), c in zip(np.asarray(boxes).reshape(-1, 4), classes):
            obj = ET.SubElement(ann, "object")
            ET.SubElement(obj, "name").text = class_names[int(c) - 1]
            ET.SubElement(obj, "difficult").text = "0"
            box = ET.SubElement(obj, "bndbox")
            for tag, v in (("xmin", round(x0 * w) + 1), ("ymin", round(y0 * h) + 1), ("xmax", round(x1 * w)),
                           ("ymax", round(y1 * h))):
                ET.SubElement(box, tag).text = str(int(v))
        ET.ElementTree(ann).write(root / "Annotations" / f"{name}.xml")
    return str(root)


def voc_folder(path, class_names=None):
    """A Pascal VOC folder (``Annotations/*.xml`` beside ``JPEGImages/``) -> (encoded images, one (boxes, classes)
    per image, class names). Boxes become (ymin, xmin, ymax, xmax) fractions; classes count from 1 in the order of
    ``class_names`` (default: the names found, sorted); objects marked difficult are left out, as VOC's evaluation
    leaves them."""
    import xml.etree.ElementTree as ET
    from pathlib import Path
    root = Path(path)
    files = sorted((root / "Annotations").glob("*.xml"))
    if not files:
        raise ValueError(f"{path} holds no Annotations/*.xml: give a Pascal VOC folder (Annotations/ with one XML "
                         "per picture, JPEGImages/ with the pictures), e.g. as samples.write_voc_folder writes it.")
    parsed = []
    for f in files:
        try:
            ann = ET.parse(f).getroot()
            w, h = (float(ann.findtext(f"size/{k}")) for k in ("width", "height"))
            objs = [(o.findtext("name").strip(), [float(o.findtext(f"bndbox/{k}")) for k in
                                                   ("ymin", "xmin", "ymax", "xmax")])
                    for o in ann.iter("object") if o.findtext("difficult", "0").strip() != "1"]
            image = root / "JPEGImages" / ann.findtext("filename").strip()
        except (ET.ParseError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"{f}: not a Pascal VOC annotation ({e}); it needs filename, size/width, size/height "
                             "and, per object, name and bndbox/xmin, ymin, xmax, ymax.") from None
        if not image.is_file():
            raise ValueError(f"{f} names {image.name}, which is not in {root / 'JPEGImages'}.")
        parsed.append((image, w, h, objs))
    names = list(class_names) if class_names else sorted({n for *_, objs in parsed for n, _ in objs})
    images, truths = [], []
    for image, w, h, objs in parsed:
        unknown = [n for n, _ in objs if n not in names]
        if unknown:
            raise ValueError(f"{image.name} has objects of class {unknown[0]!r}, not in class_names {names}.")
        boxes = [((y0 - 1) / h, (x0 - 1) / w, y1 / h, x1 / w) for _, (y0, x0, y1, x1) in objs]
        images.append(image.read_bytes())
        truths.append((np.asarray(boxes, np.float32).reshape(-1, 4),
                       np.asarray([names.index(n) + 1 for n, _ in objs], np.int64)))
    return images, truths, tuple(names)
