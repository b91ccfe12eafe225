"""Read the key/value metadata at the head of a GGUF file, without llama.cpp.

Only the header is parsed; tensor data is never read. Large arrays (the
tokenizer's vocabulary) are skipped rather than decoded.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from pathlib import Path
from typing import Any

from sweep.errors import ModelError

_MAGIC = b"GGUF"
# GGUF value types: id -> struct format (scalars only).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_MAX_DEPTH = 8  # llama.cpp writes arrays of scalars or strings; deeper nesting is a broken (or hostile) file

# llama.cpp's enum llama_ftype, as stored in general.file_type.
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0", 41: "Q2_0",
}
QUANT_IDS: dict[str, int] = {name: ftype for ftype, name in FILE_TYPES.items()}


class _Reader:
    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise ModelError(f"{self.path}: GGUF header is truncated at byte {self.pos}")
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("Q")
        if self.pos + n > len(self.buf):
            raise ModelError(f"{self.path}: GGUF header is truncated at byte {self.pos}")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, keep: bool, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise ModelError(f"{self.path}: GGUF arrays nested more than {_MAX_DEPTH} deep at byte {self.pos}")
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, count = self.take("I"), self.take("Q")
            if itype in _SCALARS and not keep:
                self.pos += count * struct.calcsize("<" + _SCALARS[itype])
                return None
            if itype == _STRING and not keep:
                # A tokenizer's vocabulary: hundreds of thousands of strings, read only to skip.
                for _ in range(count):
                    length = self.take("Q")  # take() moves pos past the length; read it before adding
                    self.pos += length
                if self.pos > len(self.buf):
                    raise ModelError(f"{self.path}: GGUF header is truncated at byte {self.pos}")
                return None
            items = [self.value(itype, keep, depth + 1) for _ in range(count)]
            return items if keep else None
        raise ModelError(f"{self.path}: unknown GGUF value type {vtype} at byte {self.pos}")


def read_metadata(path: str | Path, keep_arrays: bool | tuple[str, ...] = False) -> dict[str, Any]:
    """Return the GGUF metadata of ``path`` as a dict (arrays as None unless kept: all of them, or
    those whose keys ``keep_arrays`` names).

    Raises:
        ModelError: the file is missing, is not GGUF, or its header is cut short.
    """
    path = Path(path)
    try:
        # Opened without blocking and checked before reading: a FIFO or a device named *.gguf in a
        # models directory must fail its own entry, never hang or break the scan.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ModelError(f"{path}: model file does not exist") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model file ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ModelError(f"{path}: not a regular file")
        with open(fd, "rb", closefd=False) as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != _MAGIC:
                raise ModelError(f"{path}: not a GGUF file (magic bytes {bytes(buf[:4])!r})")
            r = _Reader(buf, path)
            r.pos = 4
            version = r.take("I")
            if version < 2:
                raise ModelError(f"{path}: GGUF version {version} is too old (need 2 or newer)")
            r.take("Q")  # tensor count
            n_kv = r.take("Q")
            meta: dict[str, Any] = {"gguf.version": version}
            for _ in range(n_kv):
                key = r.string()
                keep = key in keep_arrays if isinstance(keep_arrays, tuple) else keep_arrays
                meta[key] = r.value(r.take("I"), keep)
            return meta
    except ValueError as exc:  # mmap of an empty file
        raise ModelError(f"{path}: not a GGUF file ({exc})") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model file ({exc.strerror})") from None
    finally:
        os.close(fd)


def quant_of(meta: dict[str, Any]) -> str | None:
    """The quantization named by ``general.file_type``, or None if absent or unknown."""
    ftype = meta.get("general.file_type")
    return FILE_TYPES.get(ftype) if isinstance(ftype, int) else None


# llama.cpp's token types (llama_token_type): its tokenizer matches the text of these as one token
# when it parses special tokens; NORMAL (1) and BYTE (6) are ordinary text.
_SPECIAL_TYPES = {2, 3, 4}  # UNKNOWN, CONTROL, USER_DEFINED


def special_token_ids(path: str | Path) -> frozenset[int]:
    """The ids of the tokens a model's tokenizer can make of special text (template markers and the
    like), from ``tokenizer.ggml.token_type``; empty where the GGUF has no types."""
    types = read_metadata(path, keep_arrays=("tokenizer.ggml.token_type",)).get("tokenizer.ggml.token_type") or []
    return frozenset(i for i, t in enumerate(types) if t in _SPECIAL_TYPES)
