"""How llama.cpp is built: for this CPU, less Intel AMX, the bindings and the programs alike.

CPUID reports AMX in virtual machines whose kernel never enables its tile state; there a native
build's first batched matrix product dies with a general protection fault, and every trial crashes.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sweep.models import tools

ROOT = Path(__file__).resolve().parent.parent
x86_only = pytest.mark.skipif(platform.machine() != "x86_64", reason="AMX is an x86-64 extension")


@x86_only
def test_the_makefile_builds_the_bindings_with_the_flags_the_tools_use() -> None:
    (line,) = [ln for ln in (ROOT / "Makefile").read_text().splitlines() if ln.startswith("NO_AMX :=")]
    assert re.search(r",(-mno-amx[^)]*)\)", line).group(1) == tools.NO_AMX  # type: ignore[union-attr]
    assert all(f"-DCMAKE_{lang}_FLAGS={tools.NO_AMX}" in tools.CMAKE_FLAGS for lang in ("C", "CXX"))


@x86_only
@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
def test_the_installed_bindings_hold_no_amx_instruction() -> None:
    import llama_cpp

    libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml-cpu*.so*"))
    assert libs, "llama-cpp-python's CPU backend library was not found"
    assert not _amx_in(libs[0]), f"{libs[0]} was built with AMX: reinstall llama-cpp-python with `make install`"


@x86_only
@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
def test_the_built_llama_server_holds_no_amx_instruction(server_tools: Path) -> None:
    assert not _amx_in(server_tools), f"{server_tools} was built with AMX: run `sweep tools build`"


def _amx_in(binary: Path) -> bool:
    """Whether the machine code holds an AMX tile instruction (ldtilecfg, tileloadd, tdpb*)."""
    code = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(binary)], capture_output=True, text=True,
                          check=True).stdout
    return re.search(r"\b(ldtilecfg|tileloadd|tdpb[a-z]*)\b", code) is not None


def test_tools_built_with_other_flags_are_refused_and_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEP_TOOLS_DIR", str(tmp_path))
    version = tools.bindings_version()
    bin_dir = tools.tools_dir(version) / "bin"
    bin_dir.mkdir(parents=True)
    for program in tools.PROGRAMS:
        (bin_dir / program).write_text("#!/bin/sh\n")
        (bin_dir / program).chmod(0o755)
    old = [f for f in tools.CMAKE_FLAGS if "AMX" not in f and "amx" not in f]
    (tools.tools_dir(version) / tools.MANIFEST).write_text(json.dumps({"cmake_flags": old}))
    if old != list(tools.CMAKE_FLAGS):
        with pytest.raises(tools.ToolsError, match="built with other flags"):
            tools.binary("llama-server")
        assert not tools._current(tools.manifest(version), tools.tools_dir(version), force=False)
    (tools.tools_dir(version) / tools.MANIFEST).write_text(json.dumps({"cmake_flags": list(tools.CMAKE_FLAGS)}))
    assert tools.binary("llama-server") == bin_dir / "llama-server"
    assert tools._current(tools.manifest(version), tools.tools_dir(version), force=False)
