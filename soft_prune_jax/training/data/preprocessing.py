"""Per-image preprocessing inside tf.data: the train augmentations, the evaluation crops, the resize to
the model's input and the normalisation (docs/method.md, "Training recipe").

Train images, by ``DatasetSpec.augmentation``: 'imagenet' (random-resized-crop of the JPEG, decoding
only the crop), 'random_resized_crop' (the same of a decoded image), 'pad_crop_flip' (pad, crop back,
flip) or 'none'. Evaluation resizes and centre-crops 87.5% where training random-resized-crops.
"""

from __future__ import annotations

from soft_prune_jax.training.data.spec import DatasetSpec

IMAGENET_TRAIN_SIZE, IMAGENET_EVAL_RESIZE = 224, 256


def normalize(image, spec: DatasetSpec):
    import tensorflow as tf

    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(spec.mean, tf.float32)) / tf.constant(spec.std, tf.float32)


def _pad_crop_flip(image, seed, pad: int, *, flip: bool):
    """Zero-pad by ``pad``, random crop back to the original size, random horizontal flip."""
    import tensorflow as tf

    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    height, width, channels = image.shape
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(image, (height, width, channels), seed=crop_seed)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return image


def _imagenet_train_image(jpeg, seed):
    """Random-resized-crop (area 8-100%, aspect 3/4-4/3) to 224 + horizontal flip."""
    import tensorflow as tf

    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.image.extract_jpeg_shape(jpeg)
    whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        whole_image,
        seed=crop_seed,
        min_object_covered=0.08,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop_window = tf.stack([begin[0], begin[1], size[0], size[1]])
    image = tf.image.decode_and_crop_jpeg(jpeg, crop_window, channels=3)
    image = tf.image.resize(image, (IMAGENET_TRAIN_SIZE, IMAGENET_TRAIN_SIZE), method="bilinear", antialias=True)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def _random_resized_crop(image, seed, size):
    """Random-resized-crop (area 8-100%, aspect 3/4-4/3) of a decoded image to ``size`` + horizontal flip."""
    import tensorflow as tf

    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        whole_image,
        seed=crop_seed,
        min_object_covered=0.08,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.image.resize(tf.slice(image, begin, crop), size, method="bilinear", antialias=True)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


EVAL_CROP_FRACTION = IMAGENET_TRAIN_SIZE / IMAGENET_EVAL_RESIZE  # 0.875: the centre crop's share of the resize


def _centre_crop(image, size, channels: int):
    """Resize so that ``size`` is 87.5% of the image (ImageNet: shorter side 256), centre crop ``size``."""
    import tensorflow as tf

    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = tf.maximum((size[0] / EVAL_CROP_FRACTION) / height, (size[1] / EVAL_CROP_FRACTION) / width)
    new_size = tf.cast(tf.round(tf.stack([height * scale, width * scale])), tf.int32)
    new_size = tf.maximum(new_size, size)  # rounding must never undercut the crop
    image = tf.image.resize(image, new_size, method="bilinear", antialias=True)
    top = (new_size[0] - size[0]) // 2
    left = (new_size[1] - size[1]) // 2
    image = image[top : top + size[0], left : left + size[1]]
    return tf.ensure_shape(image, (*size, channels))


def _fit(image, spec: DatasetSpec):
    """The image at the model's input size: resized where the stored images have another (or no fixed) size."""
    import tensorflow as tf

    height, width, channels = spec.input_shape
    if tuple(spec.stored_shape()[:2]) == (height, width):
        return image
    image = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
    return tf.ensure_shape(image, (height, width, channels))


def train_image(image, seed, spec: DatasetSpec, augment: bool):
    if spec.augmentation == "imagenet":
        return _imagenet_train_image(image, seed)  # the crop is the resize; always on
    if spec.augmentation == "random_resized_crop":
        size = tuple(spec.input_shape[:2])
        return _random_resized_crop(image, seed, size) if augment else _centre_crop(image, size, spec.input_shape[2])
    image = _fit(image, spec)
    return _pad_crop_flip(image, seed, pad=spec.pad, flip=True) if augment else image


def eval_image(image, spec: DatasetSpec):
    if spec.augmentation in ("imagenet", "random_resized_crop"):
        return _centre_crop(image, tuple(spec.input_shape[:2]), spec.input_shape[2])
    return _fit(image, spec)
