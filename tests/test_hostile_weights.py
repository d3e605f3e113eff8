"""Hostile .pth weights files (issue 11 case 2): forged tensor geometry, forged storage sizes and
damaged bytes give a WeightsFileError naming the file and the tensor, never a crash, a heap read
or a MemoryError."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from covnb.backbones import UnsafePickleError, WeightsFileError, read_legacy_torch_state_dict

# ----------------------------------------------------------------------------- 2 .pth tensor geometry



def _fragment(value) -> bytes:
    """Pickle opcodes of one plain value (no PROTO header, no STOP)."""
    return pickle.dumps(value, protocol=2)[2:-1]


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _tensor(key: str, numel: int, offset, size, stride, storage: str = "FloatStorage") -> bytes:
    persistent = (b"(" + _fragment("storage") + _global("torch", storage) + _fragment(key) + _fragment("cpu")
                  + _fragment(numel) + b"tQ")
    return (_global("torch._utils", "_rebuild_tensor_v2") + b"(" + persistent + _fragment(offset) + _fragment(size)
            + _fragment(stride) + _fragment(False) + b"tR")


def torch_file(tensors: dict, storages: dict[str, np.ndarray], *, counts: dict | None = None) -> bytes:
    """A legacy .pth file: tensors name -> (storage key, offset, size, stride); storages key -> data."""
    header = b"".join(pickle.dumps(obj, protocol=2) for obj in (
        0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}))
    state = b"\x80\x02}"
    for name, (key, offset, size, stride) in tensors.items():
        state += _fragment(name) + _tensor(key, int((counts or {}).get(key, storages[key].size)), offset, size,
                                           stride) + b"s"
    state += b"."
    body = pickle.dumps(list(storages), protocol=2)
    for key, data in storages.items():
        body += struct.pack("<q", int((counts or {}).get(key, data.size))) + data.astype("<f4").tobytes()
    return header + state + body


def test_well_formed_weights_read_with_their_geometry(tmp_path):
    data = np.arange(12, dtype=np.float32)
    path = tmp_path / "ok.pth"
    path.write_bytes(torch_file({"w": ("0", 0, (3, 4), (4, 1)), "wt": ("0", 0, (4, 3), (1, 4)),
                                 "tail": ("0", 10, (2,), (1,)), "empty": ("0", 0, (0, 5), (5, 1))}, {"0": data}))
    state = read_legacy_torch_state_dict(path)
    assert np.array_equal(state["w"], data.reshape(3, 4))
    assert np.array_equal(state["wt"], data.reshape(3, 4).T)
    assert np.array_equal(state["tail"], [10, 11]) and state["empty"].shape == (0, 5)


@pytest.mark.parametrize("geometry, problem", [
    ((0, (4,), (-1,)), "negative"),                       # would read heap memory before the storage
    ((11, (12,), (-1,)), "negative"),
    ((0, (3, 4), (-4, 1)), "negative"),
    ((-1, (2,), (1,)), "negative"),
    ((0, (4, 4), (4, 1)), "holds 16 values"),              # more values than stored
    ((0, (3, 4), (5, 1)), "beyond the 12 values"),        # strides overrun the storage
    ((10, (2, 2), (1, 1)), "read value 12, beyond the 12 values"),
    ((0, (2**40, 2**40), (0, 0)), "more than the 12"),   # MemoryError bait
    ((0, (3,), (1, 1)), "1 sizes but 2 strides"),
    ((0, (2.5,), (1,)), "integers"),
])
def test_forged_tensor_geometry_is_refused_naming_file_and_tensor(tmp_path, geometry, problem):
    path = tmp_path / "forged.pth"
    path.write_bytes(torch_file({"good": ("0", 0, (12,), (1,)), "layer.weight": ("0", *geometry)},
                                {"0": np.arange(12, dtype=np.float32)}))
    with pytest.raises(WeightsFileError) as caught:
        read_legacy_torch_state_dict(path)
    message = str(caught.value)
    assert str(path) in message and "'layer.weight'" in message and problem in message


@pytest.mark.parametrize("declared", [2**40, -1])
def test_storage_claiming_more_bytes_than_the_file_has_is_refused(tmp_path, declared):
    path = tmp_path / "huge.pth"
    path.write_bytes(torch_file({"w": ("0", 0, (2,), (1,))}, {"0": np.zeros(2, np.float32)}, counts={"0": declared}))
    with pytest.raises(WeightsFileError, match="huge.pth") as caught:
        read_legacy_torch_state_dict(path)
    assert "storage 0" in str(caught.value) or "element count" in str(caught.value)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(-3, 14), size=st.lists(st.integers(-1, 6), min_size=0, max_size=3),
       stride=st.lists(st.integers(-3, 6), min_size=0, max_size=3))
def test_any_tensor_geometry_gives_the_right_values_or_a_named_refusal(tmp_path_factory, offset, size, stride):
    data = np.arange(12, dtype=np.float32) + 100
    path = tmp_path_factory.mktemp("pth") / "fuzz.pth"
    path.write_bytes(torch_file({"t": ("0", offset, tuple(size), tuple(stride))}, {"0": data}))
    try:
        state = read_legacy_torch_state_dict(path)
    except WeightsFileError as error:
        assert str(path) in str(error) and "'t'" in str(error)
        return
    # Accepted: the geometry is valid, and the values are those the definition gives.
    assert len(size) == len(stride) and offset >= 0 and min(size + stride + [0]) >= 0
    expected = np.zeros(size, np.float32)
    for index in np.ndindex(*size):
        expected[index] = data[offset + sum(i * s for i, s in zip(index, stride))]
    assert np.array_equal(state["t"], expected)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, 10_000), value=st.integers(0, 255), cut=st.integers(0, 10_000))
def test_damaged_weights_bytes_give_a_named_error_or_the_right_tensors(tmp_path_factory, position, value, cut):
    data = np.arange(6, dtype=np.float32)
    good = torch_file({"a": ("0", 0, (2, 3), (3, 1)), "b": ("1", 1, (2,), (2,))},
                      {"0": data, "1": data * 2})
    damaged = bytearray(good)
    damaged[position % len(good)] = value
    damaged = bytes(damaged[: len(good) - cut % len(good)] if cut % 3 == 0 else damaged)
    path = tmp_path_factory.mktemp("pth") / "damaged.pth"
    path.write_bytes(damaged)
    try:
        state = read_legacy_torch_state_dict(path)
    except (WeightsFileError, UnsafePickleError) as error:
        assert str(path) in str(error)
        return
    for name, array in state.items():  # accepted: every tensor lies within what the file holds
        if isinstance(array, np.ndarray):
            assert array.size <= 6
