"""How llama.cpp is built: once, for this CPU less Intel AMX, the bindings and the programs alike.

CPUID reports AMX in virtual machines whose kernel never enables its tile state; there a native
build's first batched matrix product dies with a general protection fault, and every trial crashes.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sweep.models import tools

ROOT = Path(__file__).resolve().parent.parent
x86_only = pytest.mark.skipif(platform.machine() != "x86_64", reason="AMX is an x86-64 extension")


def test_the_makefile_compiles_llama_cpp_once() -> None:
    """The bindings are installed as Python only, then `sweep tools build` makes their libraries."""
    recipe = (ROOT / "Makefile").read_text().split("$(VENV)/.installed:", 1)[1].split("\n\n", 1)[0]
    pip_lines = [ln for ln in recipe.splitlines() if "pip install" in ln and "llama-cpp-python" in ln]
    assert pip_lines and all('CMAKE_ARGS="-DLLAMA_BUILD=OFF"' in ln for ln in pip_lines)
    assert "sweep tools build" in recipe
    if tools.NO_AMX:
        assert all(f"-DCMAKE_{lang}_FLAGS={tools.NO_AMX}" in tools.CMAKE_FLAGS for lang in ("C", "CXX"))


@pytest.mark.slow
def test_the_bindings_load_the_very_libraries_llama_server_runs(server_tools: Path) -> None:
    """One compile: the process that imports llama_cpp maps the built libraries, byte for byte."""
    done = tools.manifest()
    assert done and done["libraries"], "the tools' manifest lists no libraries: run `sweep tools build`"
    assert tools.bindings_differ(done) == []
    code = ("import llama_cpp, sys; sys.stdout.write(open('/proc/self/maps').read())")
    maps = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = {Path(line.split()[-1]) for line in maps.splitlines() if "/libllama.so" in line}
    assert loaded and all(tools._digest(path) == done["libraries"][path.name] for path in loaded), loaded
    needed = subprocess.run(["ldd", str(server_tools)], capture_output=True, text=True, check=True).stdout
    assert "not found" not in needed, needed  # every library llama-server asks for is beside it
    resolved = {line.split()[0]: Path(line.split()[2]).resolve() for line in needed.splitlines() if " => /" in line}
    assert resolved["libllama.so.0"] == (tools.tools_dir() / "lib" / "libllama.so.0").resolve(), resolved


def test_link_bindings_copies_each_library_once_and_only_when_it_differs(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEP_TOOLS_DIR", str(tmp_path / "tools"))
    built = tools.tools_dir("9.9.9") / "lib"
    built.mkdir(parents=True)
    (built / "libllama.so.0").write_bytes(b"llama")
    (built / "libggml.so.0").write_bytes(b"ggml")
    (built / "libllama-server-impl.so").write_bytes(b"no version")  # its own soname
    names = ("libllama.so.0", "libggml.so.0", "libllama-server-impl.so")
    done = {"llama_cpp_python": "9.9.9", "libraries": {n: tools._digest(built / n) for n in names}}
    lib = tmp_path / "site" / "llama_cpp" / "lib"
    lib.mkdir(parents=True)
    (lib / "libllama.so.0.5.0").write_bytes(b"pip's own build")
    (lib / "libllama.so.0").symlink_to("libllama.so.0.5.0")
    assert sorted(tools.bindings_differ(done, lib)) == sorted(names)
    said: list[str] = []
    tools.link_bindings(done, said.append, lib)
    assert (lib / "libllama.so").read_bytes() == b"llama" and (lib / "libggml.so").read_bytes() == b"ggml"
    assert not (lib / "libllama.so.0").is_symlink() and (lib / "libllama.so").readlink() == Path("libllama.so.0")
    assert (lib / "libllama-server-impl.so").read_bytes() == b"no version"
    assert tools.bindings_differ(done, lib) == [] and len(said) == 1
    tools.link_bindings(done, said.append, lib)
    assert len(said) == 1  # nothing to do, nothing said
    (lib / "libggml.so.0").write_bytes(b"another build")
    tools.link_bindings(done, said.append, lib)
    assert (lib / "libggml.so").read_bytes() == b"ggml" and "libggml.so.0" in said[-1]


@x86_only
@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
def test_the_installed_bindings_hold_no_amx_instruction() -> None:
    import llama_cpp

    libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml-cpu*.so*"))
    assert libs, "llama-cpp-python's CPU backend library was not found"
    assert not _amx_in(libs[0]), f"{libs[0]} was built with AMX: run `sweep tools build`"


@pytest.mark.slow
@x86_only
@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
def test_the_built_llama_server_and_its_libraries_hold_no_amx_instruction(server_tools: Path) -> None:
    for path in [server_tools, *sorted((server_tools.parent.parent / "lib").glob("libggml*.so.*"))]:
        assert not _amx_in(path), f"{path} was built with AMX: run `sweep tools build`"


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
    (tools.tools_dir(version) / "lib").mkdir()
    (tools.tools_dir(version) / "lib" / "libllama.so.0").write_bytes(b"llama")
    libraries = {"libllama.so.0": tools._digest(tools.tools_dir(version) / "lib" / "libllama.so.0")}
    old = [f for f in tools.CMAKE_FLAGS if "AMX" not in f and "amx" not in f and "SHARED" not in f]
    (tools.tools_dir(version) / tools.MANIFEST).write_text(json.dumps({"cmake_flags": old, "libraries": libraries,
                                                                        "layout": tools.LAYOUT}))
    if old != list(tools.CMAKE_FLAGS):
        with pytest.raises(tools.ToolsError, match="built with other flags"):
            tools.binary("llama-server")
        assert not tools._current(tools.manifest(version), tools.tools_dir(version), force=False)
    current = {"cmake_flags": list(tools.CMAKE_FLAGS), "libraries": libraries, "layout": tools.LAYOUT}
    (tools.tools_dir(version) / tools.MANIFEST).write_text(json.dumps(current))
    assert tools.binary("llama-server") == bin_dir / "llama-server"
    assert tools._current(tools.manifest(version), tools.tools_dir(version), force=False)
    (tools.tools_dir(version) / "lib" / "libllama.so.0").unlink()  # a library lost: built again
    assert not tools._current(tools.manifest(version), tools.tools_dir(version), force=False)
