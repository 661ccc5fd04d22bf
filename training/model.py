"""Compact residual CNN (Keras) + the ambiguous-label loss + tf.data augmentation."""
from __future__ import annotations

import numpy as np

LAST_CONV = "last_conv"


def cpu_supports_bf16() -> bool:
    try:
        txt = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in txt or "amx_bf16" in txt


def set_precision(mode: str) -> str:
    """mode auto|bf16|fp32 -> the Keras dtype policy actually set."""
    import keras

    use = mode == "bf16" or (mode == "auto" and cpu_supports_bf16())
    policy = "mixed_bfloat16" if use else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def build_model(image_size: int | None, num_classes: int = 9, width: int = 32,
                stages=(1, 2, 2, 2), dropout: float = 0.3, seed: int = 0, stem_stride: int = 2,
                colour_constancy: str = "none"):
    """Input: float32 RGB 0..255 (size x size). Output: float32 logits (softmax applied
    outside with the calibrated temperature). The last conv layer is named 'last_conv'.

    ``image_size`` None builds a model that takes any square size (used while training with
    progressive resizing; the exported model has the fixed size).

    ``stem_stride`` 4 adds a stride-2 conv before the stem conv, so a larger input (more
    dermoscopic detail) costs about the same compute in the residual stages as a smaller
    input with the stride-2 stem.

    ``colour_constancy`` (``mlcore.colour.MODES``) adds that step as the model's first layer."""
    if stem_stride not in (2, 4):
        raise ValueError(f"stem_stride must be 2 or 4, not {stem_stride}")
    import keras
    from keras import layers

    init = keras.initializers.HeNormal(seed=seed)
    inp = keras.Input((image_size, image_size, 3), name="image")  # None x None when image_size is None
    from mlcore.colour import apply_layer

    x = apply_layer(inp, colour_constancy)
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(x)
    if stem_stride == 4:
        x = layers.Conv2D(max(width // 2, 8), 3, strides=2, padding="same", use_bias=False,
                          kernel_initializer=init, name="stem0_conv")(x)
        x = layers.BatchNormalization(name="stem0_bn")(x)
        x = layers.Activation("relu", name="stem0_relu")(x)
    x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False, kernel_initializer=init,
                      name="stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    ch = width
    n_stages = len(stages)
    for s, nb in enumerate(stages):
        for b in range(nb):
            stride = 2 if (b == 0 and s > 0) else 1
            name = f"s{s}b{b}"
            sc = x
            y = layers.Conv2D(ch, 3, strides=stride, padding="same", use_bias=False,
                              kernel_initializer=init, name=name + "_c1")(x)
            y = layers.BatchNormalization(name=name + "_bn1")(y)
            y = layers.Activation("relu", name=name + "_r1")(y)
            y = layers.Conv2D(ch, 3, padding="same", use_bias=False, kernel_initializer=init,
                              name=name + "_c2")(y)
            y = layers.BatchNormalization(name=name + "_bn2", gamma_initializer="zeros")(y)
            if stride != 1 or sc.shape[-1] != ch:
                if stride != 1:
                    sc = layers.AveragePooling2D(stride, padding="same", name=name + "_pool")(sc)
                sc = layers.Conv2D(ch, 1, use_bias=False, kernel_initializer=init,
                                   name=name + "_proj")(sc)
                sc = layers.BatchNormalization(name=name + "_projbn")(sc)
            x = layers.Add(name=name + "_add")([sc, y])
            x = layers.Activation("relu", name=name + "_out")(x)
        if s < n_stages - 1:
            ch *= 2
    x = layers.Conv2D(ch * 2, 1, use_bias=False, kernel_initializer=init, name=LAST_CONV)(x)
    x = layers.BatchNormalization(name="last_bn")(x)
    x = layers.Activation("relu", name="last_relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, seed=seed, name="dropout")(x)
    out = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inp, out, name="secondlook_cnn")


MOBILENET_LAST_CONV = "out_relu"
BN_MOMENTUM = 0.99


def _mobilenet_block(layer_name: str) -> int:
    """The MobileNetV2 block a Keras layer belongs to: -1 for the stem (``Conv1``...), 0 for
    ``expanded_conv*``, i for ``block_i_*``, 99 for the layers after the last block."""
    if layer_name.startswith(("Conv1", "bn_Conv1")):
        return -1
    if layer_name.startswith("expanded_conv"):
        return 0
    if layer_name.startswith("block_"):
        return int(layer_name.split("_")[1])
    return 99


def build_mobilenet_v2(image_size: int | None, num_classes: int = 9, dropout: float = 0.2,
                       seed: int = 0, colour_constancy: str = "none", freeze_blocks: int = 0):
    """Keras MobileNetV2 (alpha 1.0) on the same input contract as `build_model` (float32 RGB
    0..255, colour constancy as the first layer, logits out; penultimate layer 'gap'). Its layers
    keep Keras's names, so the bundled ImageNet weights (`training.backbone`) load by name.

    ``freeze_blocks`` k > 0 keeps the stem and blocks 0..k-1 frozen (BatchNorm in inference mode):
    the high-resolution blocks cost most of the backward pass, and their edge and colour filters
    need the least adapting."""
    import keras
    from keras import layers

    from mlcore.colour import apply_layer

    inp = keras.Input((image_size, image_size, 3), name="image")
    x = apply_layer(inp, colour_constancy)
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(x)
    base = keras.applications.MobileNetV2(input_tensor=x, include_top=False, weights=None, alpha=1.0)
    for layer in base.layers:
        if freeze_blocks > 0 and _mobilenet_block(layer.name) < freeze_blocks and layer.weights:
            layer.trainable = False
        elif isinstance(layer, layers.BatchNormalization):
            # Keras builds these with momentum 0.999: over a short fine-tuning run the moving
            # statistics would stay close to ImageNet's, and validation (which uses them) lag
            # far behind training (measured: validation loss rising while training loss fell)
            layer.momentum = BN_MOMENTUM
    x = layers.GlobalAveragePooling2D(name="gap")(base.output)
    x = layers.Dropout(dropout, seed=seed, name="dropout")(x)
    out = layers.Dense(num_classes, dtype="float32", name="logits",
                       kernel_initializer=keras.initializers.GlorotUniform(seed=seed))(x)
    return keras.Model(inp, out, name="secondlook_mobilenet_v2")


def set_loss(label_smoothing: float = 0.0, distill_weight: float = 0.0, offset: bool = False,
             malignancy_weight: float = 0.0):
    """loss = -log(sum_{c in allowed} p_c), computed stably in float32 from logits.
    y_true is the multi-hot mask of allowed classes. With smoothing e: (1-e)*set-NLL + e*mean CE.
    With ``distill_weight`` w > 0, y_true is the mask followed by a teacher's class probabilities q
    (``training.distill``) and the loss is (1-w) * the above + w * cross-entropy(q, softmax(logits)).
    With ``offset``, y_true ends with a fixed per-image logit offset (a clinical-context offset,
    ``TrainConfig.offset_in_loss_from``) that is added to the logits before all of the above, so the
    network is trained on what the offset does not already say.
    With ``malignancy_weight`` w > 0, w * the binary cross-entropy of malignant against benign
    (P(malignant) = the sum over ``mlcore.labels.MALIGNANT_INDICES``, the app's malignancy score) is
    added for every image whose allowed classes are all malignant or all benign: a confusion inside
    either group then costs less than one across them.
    Written with ``keras.ops``, so the same loss trains on any Keras backend (TensorFlow here,
    JAX on an accelerator: `training.accelerated`)."""
    from keras import ops

    from mlcore.labels import MALIGNANT_INDICES, NUM_CLASSES

    malignant = np.zeros(NUM_CLASSES, np.float32)
    malignant[list(MALIGNANT_INDICES)] = 1.0

    def loss(y_true, logits):
        logits = ops.cast(logits, "float32")
        n_classes = ops.shape(logits)[-1]
        y_true = ops.cast(y_true, "float32")
        if offset:
            logits = logits + y_true[:, -n_classes:]
        mask = y_true[:, :n_classes]
        lse_all = ops.logsumexp(logits, axis=-1)
        masked = ops.where(mask > 0.5, logits, ops.full_like(logits, -1e9))
        nll = lse_all - ops.logsumexp(masked, axis=-1)
        if label_smoothing > 0:
            uni = lse_all - ops.mean(logits, axis=-1)
            nll = (1.0 - label_smoothing) * nll + label_smoothing * uni
        if distill_weight > 0:
            soft = y_true[:, n_classes:2 * n_classes]
            nll = (1.0 - distill_weight) * nll + distill_weight * (lse_all - ops.sum(soft * logits, axis=-1))
        if malignancy_weight > 0:
            is_mal = ops.convert_to_tensor(malignant)
            allowed_mal = ops.sum(mask * is_mal, axis=-1)
            allowed_ben = ops.sum(mask * (1.0 - is_mal), axis=-1)
            lse_mal = ops.logsumexp(ops.where(is_mal > 0.5, logits, ops.full_like(logits, -1e9)), axis=-1)
            lse_ben = ops.logsumexp(ops.where(is_mal > 0.5, ops.full_like(logits, -1e9), logits), axis=-1)
            group_nll = ops.where(allowed_ben < 0.5, lse_all - lse_mal, lse_all - lse_ben)
            pure = ops.cast(ops.logical_or(allowed_ben < 0.5, allowed_mal < 0.5), "float32")
            nll = nll + malignancy_weight * pure * group_nll
        return nll

    loss.__name__ = "set_nll"
    return loss


def hair_masks(count: int = 96, size: int = 160, seed: int = 7) -> np.ndarray:
    """A bank of ``count`` hair-occlusion alpha masks (float32 0..1, size x size): each holds
    2-14 thin, slightly curved dark strands drawn antialiased with OpenCV, like the hairs a
    dermatoscope photographs over a lesion."""
    import cv2

    rng = np.random.default_rng(seed)
    bank = np.zeros((count, size, size), np.float32)
    for i in range(count):
        canvas = np.zeros((size * 4, size * 4), np.uint8)  # drawn at 4x, then downsampled
        for _ in range(int(rng.integers(2, 15))):
            p0 = rng.uniform(-0.2, 1.2, 2) * size * 4
            direction = rng.uniform(0, 2 * np.pi)
            length = rng.uniform(0.3, 1.2) * size * 4
            bend = rng.normal(0, 0.12) * length
            p2 = p0 + length * np.array([np.cos(direction), np.sin(direction)])
            mid = (p0 + p2) / 2 + bend * np.array([-np.sin(direction), np.cos(direction)])
            t = np.linspace(0, 1, 24)[:, None]
            pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * mid + t ** 2 * p2
            cv2.polylines(canvas, [pts.astype(np.int32)], False, 255, int(rng.integers(2, 5)), cv2.LINE_AA)
        bank[i] = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA) / 255.0
    return bank


def augment_batch(images, seed_stream, *, rotate: bool = True, zoom: float = 0.2,
                  color: float = 0.15, zoom_out: float = 0.0, device: float = 0.0,
                  hair: float = 0.0, hair_bank=None):
    """Batched augmentation on float32 0..255 images: dihedral flips/transposes, random rotation,
    random crop (zoom in + shift, or zoom out by up to ``zoom_out``: the lesion smaller in the
    frame) via one projective transform per image, colour/brightness/contrast/saturation jitter.

    ``device`` > 0 (its strength, 1 = the defaults below) also varies what dermatoscopes and
    cameras vary: colour temperature (a warm/cool gain pair on red and blue), gamma, defocus blur
    and a vignette (darker corners, up to a black ring). ``hair`` > 0 draws dark hairs from
    ``hair_bank`` (see `hair_masks`) over that share of the images. `seed_stream` is a
    tf.random.Generator."""
    import math

    import tensorflow as tf

    g = seed_stream
    b = tf.shape(images)[0]
    h = tf.cast(tf.shape(images)[1], tf.float32)
    w = tf.cast(tf.shape(images)[2], tf.float32)
    x = images
    # dihedral group: random transpose + flips (square images)
    t = g.uniform([b, 1, 1, 1]) < 0.5
    x = tf.where(t, tf.transpose(x, [0, 2, 1, 3]), x)
    x = tf.where(g.uniform([b, 1, 1, 1]) < 0.5, tf.reverse(x, [2]), x)
    x = tf.where(g.uniform([b, 1, 1, 1]) < 0.5, tf.reverse(x, [1]), x)
    # rotation + zoom-in (random crop) or zoom-out + shift, one transform
    ang = g.uniform([b], -math.pi, math.pi) if rotate else tf.zeros([b])
    scale = 1.0 - g.uniform([b], 0.0, zoom)  # output pixel -> input pixel scale (<1 = zoom in)
    if zoom_out > 0:
        out = g.uniform([b]) < 0.3
        scale = tf.where(out, 1.0 + g.uniform([b], 0.0, zoom_out), scale)
    max_shift = tf.abs(1.0 - scale) * 0.5
    tx = g.uniform([b], -1.0, 1.0) * max_shift * w
    ty = g.uniform([b], -1.0, 1.0) * max_shift * h
    c, s = tf.cos(ang) * scale, tf.sin(ang) * scale
    cx, cy = w / 2.0, h / 2.0
    a0, a1 = c, -s
    a2 = cx - a0 * cx - a1 * cy + tx
    b0, b1 = s, c
    b2 = cy - b0 * cx - b1 * cy + ty
    z = tf.zeros([b])
    tr = tf.stack([a0, a1, a2, b0, b1, b2, z, z], axis=1)
    x = tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=tr, output_shape=tf.shape(x)[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="REFLECT")
    if hair > 0 and hair_bank is not None:
        # hairs: a random mask of the bank (transposed half the time), resized to the batch size,
        # blended toward a dark brown-black with a random opacity
        idx = g.uniform([b], 0, int(hair_bank.shape[0]), dtype=tf.int32)
        alpha = tf.gather(hair_bank, idx)[..., None]
        alpha = tf.where(g.uniform([b, 1, 1, 1]) < 0.5, tf.transpose(alpha, [0, 2, 1, 3]), alpha)
        alpha = tf.image.resize(alpha, tf.cast(tf.stack([h, w]), tf.int32))
        alpha *= tf.where(g.uniform([b, 1, 1, 1]) < hair, g.uniform([b, 1, 1, 1], 0.6, 1.0), 0.0)
        colour = g.uniform([b, 1, 1, 1], 10.0, 70.0) * tf.constant([1.0, 0.8, 0.65])
        x = x * (1.0 - alpha) + colour * alpha
    if device > 0:
        # defocus: blend with a 5x5 Gaussian blur (sigma ~1.2 px), a random amount per image
        k1 = tf.constant([0.05, 0.24, 0.42, 0.24, 0.05], tf.float32)
        k = tf.tile((k1[:, None] * k1[None, :])[:, :, None, None], [1, 1, 3, 1])
        blurred = tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "SAME")
        amount = tf.where(g.uniform([b, 1, 1, 1]) < 0.3 * device, g.uniform([b, 1, 1, 1], 0.0, 1.0), 0.0)
        x = x + (blurred - x) * amount
        # vignette: gain 1 - v * r^k toward the corners (r = 1 at the middle of each side)
        yy = (tf.range(h) + 0.5) / h * 2.0 - 1.0
        xx = (tf.range(w) + 0.5) / w * 2.0 - 1.0
        r = tf.sqrt(yy[:, None] ** 2 + xx[None, :] ** 2)[None, :, :, None]
        v = tf.where(g.uniform([b, 1, 1, 1]) < 0.4 * device, g.uniform([b, 1, 1, 1], 0.2, 1.0), 0.0)
        power = g.uniform([b, 1, 1, 1], 2.0, 6.0)
        x = x * tf.clip_by_value(1.0 - v * tf.pow(r / 1.41421356, power) * 1.6, 0.0, 1.0)
    if color > 0:
        bright = g.uniform([b, 1, 1, 1], -color, color) * 255.0
        contrast = 1.0 + g.uniform([b, 1, 1, 1], -color, color)
        sat = 1.0 + g.uniform([b, 1, 1, 1], -color, color)
        chan = 1.0 + g.uniform([b, 1, 1, 3], -color / 2, color / 2)
        mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
        x = (x - mean) * contrast + mean + bright
        gray = tf.reduce_mean(x, axis=3, keepdims=True)
        x = (x - gray) * sat + gray
        x = x * chan
    if device > 0:
        x = tf.clip_by_value(x, 0.0, 255.0)
        # colour temperature: warm (more red, less blue) or cool, up to +-25 % at strength 1
        temp = g.uniform([b, 1, 1, 1], -0.25, 0.25) * device
        x = x * tf.concat([1.0 + temp, tf.ones_like(temp), 1.0 - temp], axis=3)
        # gamma 0.7..1.4 (log-uniform)
        gamma = tf.exp(g.uniform([b, 1, 1, 1], math.log(0.7), math.log(1.4)) * device)
        x = 255.0 * tf.pow(tf.clip_by_value(x / 255.0, 0.0, 1.0), gamma)
    return tf.clip_by_value(x, 0.0, 255.0)


def progressive_size(progress: float, *, full: int, smallest: int, until: float, step: int = 32) -> int:
    """Training input size at schedule ``progress`` (0..1) under progressive resizing.

    Grows linearly from ``smallest`` to ``full`` over the first ``until`` of the schedule, in
    multiples of ``step`` (the network's total stride), and is ``full`` afterwards, so the last
    part of training (and every validation pass) sees the size used at inference.
    """
    if smallest <= 0 or smallest >= full or until <= 0:
        return full
    frac = min(max(progress, 0.0) / until, 1.0)
    size = smallest + (full - smallest) * frac
    return int(min(full, max(smallest, step * round(size / step))))


def make_train_dataset(images: np.ndarray, masks: np.ndarray, weights: np.ndarray, *,
                       batch_size: int, seed: int, augment: bool = True, size_var=None, **aug):
    """Shuffled, augmented batches of (image float32 0..255, mask, sample weight).

    ``size_var`` (a tf.Variable holding an int) resizes each batch to that square size
    (antialiased), read per batch, so a callback can change it between epochs. The resize comes
    before the augmentation so that small early epochs also augment fewer pixels (about half the
    input-pipeline time at 96 px).
    """
    import tensorflow as tf

    n = len(images)
    ds = tf.data.Dataset.from_tensor_slices((np.arange(n, dtype=np.int64),))
    ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True).batch(batch_size, drop_remainder=n >= 2 * batch_size)
    imgs = tf.constant(images)
    m = tf.constant(masks, dtype=tf.float32)
    wt = tf.constant(weights, dtype=tf.float32)
    gen = tf.random.Generator.from_seed(seed)
    if aug.get("hair", 0) > 0:
        aug["hair_bank"] = tf.constant(hair_masks())

    def fetch(idx):
        x = tf.cast(tf.gather(imgs, idx), tf.float32)
        if size_var is not None:
            s = tf.convert_to_tensor(size_var)
            x = tf.cond(tf.equal(s, tf.shape(x)[1]), lambda: x,
                        lambda: tf.image.resize(x, tf.stack([s, s]), antialias=True))
        if augment:
            x = augment_batch(x, gen, **aug)
        return x, tf.gather(m, idx), tf.gather(wt, idx)

    opts = tf.data.Options()
    # The parallelism above is fixed, so autotuning has nothing to tune; and its background thread
    # sleeps for up to a minute between rounds, which blocks the destruction of every epoch's
    # iterator (Keras makes one per epoch): 10-30 s of idle CPU per epoch with it enabled.
    opts.autotune.enabled = False
    return ds.map(fetch, num_parallel_calls=1, deterministic=True).prefetch(2).with_options(opts)


