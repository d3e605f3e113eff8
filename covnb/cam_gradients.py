"""The compiled computations behind :mod:`covnb.cam`: one ``tf.function`` per model, layer and method.

One forward pass gives the feature maps A_k of the explained layer, the logits and the
probabilities; CAM (Zhou et al. 2016) weighs A_k by the logits Dense weights of the class,
Grad-CAM (Selvaraju et al. 2017) by the spatial mean of d logit_c / d A_k, Grad-CAM++
(Chattopadhay et al. 2018) by pixel-wise weighted positive gradients (closed form; the
exp(score) factor is a per-frame constant that cancels in the per-frame normalisation). Every
map is ReLU'd and divided by its per-frame maximum. The functions are cached per model
(:mod:`covnb.compiled`), so a second call does not retrace.
"""

from __future__ import annotations

import keras

from covnb.cam_layers import check_backend, logits_layer, logits_source, single_output
from covnb.compiled import cached_for_model, compiled_call

__all__ = ["cam_function", "forward_function"]


def _input_spec(model: keras.Model):
    import tensorflow as tf

    shape = tuple(model.input.shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"Model {model.name!r} input must be (batch, H, W, 3) RGB; got {shape}.")
    return tf.TensorSpec((None,) + shape[1:], tf.float32)


def _build_function(model: keras.Model, layer_name: str, method: str, compiled: bool):
    import tensorflow as tf

    check_backend()
    if isinstance(model.input, (list, tuple, dict)):
        raise ValueError(f"Model {model.name!r} has several inputs; CAM needs a single image input.")
    conv_layer = model.get_layer(layer_name)
    logits_tensor, to_logits = logits_source(model)
    probs_tensor = single_output(model)
    grad_model = keras.Model(model.input, [conv_layer.output, logits_tensor, probs_tensor])
    dense = logits_layer(model) if method == "cam" else None

    def pick(logits, class_index):
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return tf.where(class_index < 0, predicted, class_index)

    def normalise(maps):
        maps = tf.nn.relu(maps)
        peak = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
        return tf.math.divide_no_nan(maps, peak)

    if method == "cam":
        def run(frames, class_index):
            features, source, probs = grad_model(frames, training=False)
            logits = to_logits(source) if to_logits else source
            chosen = pick(logits, class_index)
            class_weights = tf.gather(tf.transpose(tf.convert_to_tensor(dense.kernel)), chosen)  # (N, K)
            maps = tf.einsum("nhwk,nk->nhw", features, class_weights)
            return normalise(maps), probs, logits, chosen
    else:
        def run(frames, class_index):
            with tf.GradientTape() as tape:
                features, source, probs = grad_model(frames, training=False)
                logits = to_logits(source) if to_logits else source
                chosen = pick(logits, class_index)
                # Frames are independent at inference, so the gradient of the summed scores
                # gives every frame the gradient of its own score.
                score = tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))
            grads = tape.gradient(score, features)
            if method == "gradcam":
                weights = tf.reduce_mean(grads, axis=(1, 2))  # (N, K)
            else:  # gradcam++
                grads_2 = tf.square(grads)
                grads_3 = grads_2 * grads
                feature_sum = tf.reduce_sum(features, axis=(1, 2), keepdims=True)
                denominator = 2.0 * grads_2 + feature_sum * grads_3
                denominator = tf.where(denominator != 0.0, denominator, tf.ones_like(denominator))
                alphas = grads_2 / denominator
                weights = tf.reduce_sum(alphas * tf.nn.relu(grads), axis=(1, 2))
            maps = tf.einsum("nhwk,nk->nhw", features, weights)
            return normalise(maps), probs, logits, chosen

    if not compiled:
        return run
    return tf.function(run, input_signature=[_input_spec(model), tf.TensorSpec((None,), tf.int32)],
                       reduce_retracing=True)


def cam_function(model: keras.Model, layer_name: str, method: str, compiled: bool = True):
    """``run(frames, class_index) -> (heatmaps, probs, logits, chosen)`` for ``method`` on ``layer_name``;
    compiled and cached per model unless ``compiled`` is False (then eager, for comparison)."""
    if not compiled:
        return _build_function(model, layer_name, method, compiled=False)
    return cached_for_model(model, ("cam", layer_name, method),
                            lambda: _build_function(model, layer_name, method, compiled=True))


def forward_function(model: keras.Model):
    """The compiled, cached forward pass of ``model`` on a float32 batch of RGB frames."""
    single_output(model)  # a clear error for multi-output models
    return compiled_call(model, ("cam", "forward"), lambda frames: model(frames, training=False),
                         [_input_spec(model)], reduce_retracing=True)
