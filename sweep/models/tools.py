"""llama.cpp, compiled once: the shared libraries the bindings load and the programs
(``llama-server``, ``llama-bench``) a server trial and an export run, from one build of the very
llama.cpp that the installed llama-cpp-python vendors, so a server trial measures the same code as
a python trial, and the export deploys what was measured.

The source is llama-cpp-python's sdist for the installed version (``vendor/llama.cpp`` inside it),
fetched once with pip into the sweep cache and kept there, so a rebuild needs no network. The build
makes shared libraries (``lib/``) and the programs (``bin/``, which find the libraries through the
run path ``$ORIGIN/../lib``), with native CPU features and OpenMP, and keeps them per
llama-cpp-python version under ``<cache>/tools/llama-cpp-python-<version>/`` (``SWEEP_TOOLS_DIR``
moves ``<cache>/tools``), with a ``tools.json`` manifest: the llama.cpp commit, the flags, the
build's wall time, what ``--version`` says and each library's digest. The libraries are then copied
into the bindings' own ``llama_cpp/lib``: ``make install`` installs llama-cpp-python without
compiling (``LLAMA_BUILD=OFF``), so this is the one compile of llama.cpp.

Compiling takes minutes of both cores, so the build holds the host's measurement lock.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, TypeGuard

from sweep.errors import SweepError
from sweep.models.registry import cache_dir

PROGRAMS = ("llama-server", "llama-bench")
# llama.cpp is built with its defaults, GGML_NATIVE (this CPU's features) and OpenMP, less Intel
# AMX: CPUID reports AMX in virtual machines whose kernel never enables its tile state, and there
# ggml's first batched matrix product (``ldtilecfg``) dies with a general protection fault, so every
# trial would crash. Laptops have no AMX; a Xeon's prefill loses it. Left out too is what a
# measurement never uses: no curl or TLS (nothing is downloaded), no web UI (its assets are not in
# the sdist, and the prebuilt ones would be downloaded), no tests or examples. The libraries are
# shared (the bindings load them), and the programs find them in ``../lib`` wherever they are copied.
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" if platform.machine() in ("x86_64", "AMD64") else ""
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
    "-DCMAKE_INSTALL_RPATH=$ORIGIN/../lib:$ORIGIN", "-DGGML_NATIVE=ON", "-DGGML_OPENMP=ON",
    "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
    *((f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}") if NO_AMX else ()),
)
MANIFEST = "tools.json"
# What a build holds, in the manifest: 2 is shared libraries in lib/ (every one a program or the
# bindings load) and the programs in bin/; a build of another layout is built again.
LAYOUT = 2


class ToolsError(SweepError):
    """The tools cannot be built or are not built."""


def bindings_version() -> str:
    """The installed llama-cpp-python's version (read from its metadata: nothing is imported)."""
    try:
        return metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        raise ToolsError("llama-cpp-python is not installed in this environment") from None


def tools_root() -> Path:
    """Where built tools (and the sdists they come from) live: ``SWEEP_TOOLS_DIR``, else the cache's ``tools``."""
    return Path(os.environ.get("SWEEP_TOOLS_DIR") or cache_dir() / "tools")


def tools_dir(version: str | None = None) -> Path:
    return tools_root() / f"llama-cpp-python-{version or bindings_version()}"


def manifest(version: str | None = None) -> dict[str, Any] | None:
    """What was built for ``version`` (default: the installed one), or None."""
    path = tools_dir(version) / MANIFEST
    try:
        built: dict[str, Any] = json.loads(path.read_text())
        return built
    except (OSError, ValueError):
        return None


def binary(program: str, version: str | None = None) -> Path:
    """The built ``program`` for the installed llama-cpp-python.

    Raises:
        ToolsError: it is not built yet, with the command that builds it.
    """
    path = tools_dir(version) / "bin" / program
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ToolsError(f"{program} is not built for llama-cpp-python {version or bindings_version()} "
                         f"(looked in {path.parent}): run `sweep tools build`")
    done = manifest(version)
    if done is not None and not _same_flags(done):
        differ = " ".join(sorted(set(done["cmake_flags"]) ^ set(CMAKE_FLAGS)))
        raise ToolsError(f"{program} in {path.parent} was built with other flags than this sweep builds with "
                         f"({differ}): run `sweep tools build`")
    return path


def missing_toolchain() -> list[str]:
    """The build programs this host lacks."""
    missing = [p for p in ("cmake", "make") if not shutil.which(p)]
    if not (shutil.which("c++") or shutil.which("g++")):
        missing.append("a C++ compiler (g++)")
    return missing


def sdist_dir() -> Path:
    return tools_root() / "sdist"


def find_sdist(version: str, log: Callable[[str], None] = print) -> Path:
    """llama-cpp-python's sdist for ``version``: from the sweep cache, else fetched once with pip
    (pip's own cache makes a repeat fast) and kept in the cache."""
    name = f"llama_cpp_python-{version}.tar.gz"
    for where in filter(None, (os.environ.get("SWEEP_SDIST_DIR"), str(sdist_dir()))):
        if (Path(where) / name).is_file():
            return Path(where) / name
    sdist_dir().mkdir(parents=True, exist_ok=True)
    log(f"fetching the llama-cpp-python {version} sdist with pip into {sdist_dir()}")
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
                           "--no-build-isolation", "-d", str(sdist_dir()), f"llama-cpp-python=={version}"],
                          capture_output=True, text=True)
    if not (sdist_dir() / name).is_file():
        # Without build isolation pip may fail to read the metadata, after the download itself.
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
                               "-d", str(sdist_dir()), f"llama-cpp-python=={version}"], capture_output=True, text=True)
    if not (sdist_dir() / name).is_file():
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ToolsError(f"cannot fetch the llama-cpp-python {version} sdist with pip: {last[0]}")
    return sdist_dir() / name


def llama_cpp_commit(src: Path) -> str | None:
    """The llama.cpp commit vendored in an unpacked sdist: the submodule's HEAD, which the sdist
    carries in ``.git/modules/vendor/llama.cpp/HEAD`` (llama.cpp's build-info reads the same)."""
    head = src / ".git" / "modules" / "vendor" / "llama.cpp" / "HEAD"
    try:
        text = head.read_text().strip()
    except OSError:
        return None
    return text if len(text) == 40 and all(c in "0123456789abcdef" for c in text) else None


def program_version(path: Path) -> str:
    """What ``PROGRAM --version`` says (llama.cpp prints its build number and commit)."""
    try:
        proc = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(cannot run: {exc})"
    lines = [x for x in (proc.stdout + proc.stderr).splitlines() if x.startswith("version:")]
    return lines[0].removeprefix("version:").strip() if lines else "(no version line)"


def _same_flags(done: dict[str, Any] | None) -> bool:
    """Whether a build (its manifest) used this sweep's flags; one that recorded none is taken as is."""
    return list((done or {}).get("cmake_flags", CMAKE_FLAGS)) == list(CMAKE_FLAGS)


def _current(done: dict[str, Any] | None, target: Path, force: bool) -> TypeGuard[dict[str, Any]]:
    """Built already, with this sweep's flags (a build with other flags, one with AMX say, is redone)."""
    return bool(done and not force and _same_flags(done) and done.get("layout") == LAYOUT
                and all((target / "bin" / p).is_file() for p in PROGRAMS)
                and done.get("libraries") and all((target / "lib" / n).is_file() for n in done["libraries"]))


_SONAME = re.compile(r"^lib[\w.+-]+?\.so\.\d+$")  # libllama.so.0: the name a program or library asks the loader for


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bindings_lib_dir() -> Path:
    """The installed llama-cpp-python's ``llama_cpp/lib``, found without importing it (an import
    loads the libraries, which may not be there yet)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise ToolsError("llama-cpp-python is not installed in this environment")
    return Path(list(spec.submodule_search_locations)[0]) / "lib"


def bindings_differ(done: dict[str, Any], lib_dir: Path | None = None) -> list[str]:
    """The built libraries the bindings do not load byte for byte (missing, or another build's)."""
    lib_dir = lib_dir or bindings_lib_dir()
    differ = []
    for name, digest in done["libraries"].items():
        path = lib_dir / name
        if not path.is_file() or _digest(path) != digest:
            differ.append(name)
    return differ


def link_bindings(done: dict[str, Any], log: Callable[[str], None] = print, lib_dir: Path | None = None) -> Path:
    """Put the built libraries in the bindings' ``llama_cpp/lib``, each under its soname and its
    plain name (ctypes loads ``libllama.so``; the libraries ask for ``libggml.so.0``), so the
    bindings run the code the programs run. Each file is replaced by a rename: a worker that has
    the old one open keeps it."""
    lib_dir = lib_dir or bindings_lib_dir()
    todo = bindings_differ(done, lib_dir)
    if not todo:
        return lib_dir
    lib_dir.mkdir(parents=True, exist_ok=True)
    source = tools_dir(done["llama_cpp_python"]) / "lib"
    for name in todo:
        partial = lib_dir / f".{name}.partial"
        shutil.copy2(source / name, partial)
        os.replace(partial, lib_dir / name)
        plain = lib_dir / name[: name.index(".so") + 3]
        if plain.name != name:
            partial_link = lib_dir / f".{plain.name}.link"
            partial_link.unlink(missing_ok=True)
            partial_link.symlink_to(name)
            os.replace(partial_link, plain)
    log(f"the bindings now load the built libraries ({', '.join(sorted(todo))}) from {lib_dir}")
    return lib_dir


def build(jobs: int = 2, force: bool = False, log: Callable[[str], None] = print, lock: bool = True,
          on_wait: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build ``PROGRAMS`` for the installed llama-cpp-python, unless already built; the manifest.

    Raises:
        ToolsError: the toolchain is missing (naming the Debian packages), the sdist cannot be had,
            or the build failed (with the tail of its log).
    """
    from sweep.hostlock import measurement_lock
    from sweep.procs import owned_prefix, sweep_dead

    version = bindings_version()
    done = manifest(version)
    if _current(done, tools_dir(version), force):
        link_bindings(done, log)
        return done
    missing = missing_toolchain()
    if missing:
        raise ToolsError(f"building llama-server needs {', '.join(missing)}: apt-get install cmake g++ make "
                         "(or cmake build-essential)")
    sdist = find_sdist(version, log=log)
    target = tools_dir(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    with measurement_lock(f"building llama.cpp tools for llama-cpp-python {version}", on_wait=on_wait, enabled=lock):
        done = manifest(version)  # another process may have built them while this one waited
        if not _current(done, target, force):
            sweep_dead(target.parent, "sweep-tools-")  # build trees of builds that were killed
            with tempfile.TemporaryDirectory(prefix=owned_prefix("sweep-tools-"), dir=target.parent) as tmp:
                done = _build_in(Path(tmp), sdist, version, target, jobs, log)
        link_bindings(done, log)
        return done


def _build_in(tmp: Path, sdist: Path, version: str, target: Path, jobs: int, log: Callable[[str], None]) -> dict[str, Any]:
    log(f"unpacking {sdist.name}")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp, filter="tar") if hasattr(tarfile, "data_filter") else tar.extractall(tmp)
    src = tmp / f"llama_cpp_python-{version}"
    llama = src / "vendor" / "llama.cpp"
    if not (llama / "CMakeLists.txt").is_file():
        raise ToolsError(f"{sdist}: no vendor/llama.cpp inside")
    build_dir = tmp / "build"
    log_path = tmp / "build.log"
    configure = ["cmake", "-S", str(llama), "-B", str(build_dir), *CMAKE_FLAGS]
    compile_ = ["cmake", "--build", str(build_dir), "-j", str(jobs), "--target", *PROGRAMS]
    started = time.monotonic()
    with open(log_path, "w") as out:
        for step, cmd in (("configuring", configure), ("compiling", compile_)):
            log(f"{step}: {' '.join(cmd)}" + (" (about 6 minutes on 2 cores)" if step == "compiling" else ""))
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
            if rc != 0:
                lines = log_path.read_text(errors="replace").strip().splitlines()
                errors = [x for x in lines if "error" in x.lower()][-2:] or lines[-2:]
                raise ToolsError(f"building llama.cpp's tools failed while {step} (exit {rc}): " + " | ".join(errors))
    wall = time.monotonic() - started
    staged = tmp / "out"
    for sub in ("bin", "lib"):
        (staged / sub).mkdir(parents=True)
    for p in PROGRAMS:
        shutil.copy2(build_dir / "bin" / p, staged / "bin" / p)
    # Each shared library once, as a plain file under its soname (the link chain libggml.so ->
    # libggml.so.0 -> libggml.so.0.25.3 is the build's; the loader asks for the soname). A library
    # without a version (libllama-server-impl.so) is its own soname.
    sonames = sorted(f.name for f in (build_dir / "bin").iterdir()
                     if _SONAME.match(f.name) or (f.name.endswith(".so") and not f.is_symlink()))
    if "libllama.so.0" not in sonames and not any(n.startswith("libllama.so.") for n in sonames):
        raise ToolsError(f"building llama.cpp made no shared libllama in {build_dir / 'bin'}")
    for name in sonames:
        shutil.copyfile((build_dir / "bin" / name).resolve(), staged / "lib" / name)
    shutil.copy2(log_path, staged / "build.log")
    info = {
        "llama_cpp_python": version, "llama_cpp_commit": llama_cpp_commit(src),
        "versions": {p: program_version(staged / "bin" / p) for p in PROGRAMS},
        "layout": LAYOUT, "libraries": {name: _digest(staged / "lib" / name) for name in sonames},
        "cmake_flags": list(CMAKE_FLAGS), "jobs": jobs, "build_seconds": round(wall, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sdist": str(sdist),
    }
    (staged / MANIFEST).write_text(json.dumps(info, indent=2) + "\n")
    if target.exists():
        shutil.rmtree(target)
    os.replace(staged, target)  # whole or not at all
    log(f"built {', '.join(PROGRAMS)} and {len(sonames)} libraries in {wall:.0f} s into {target}")
    return info


def listing() -> list[dict[str, Any]]:
    """Every llama-cpp-python version with tools in the cache, the installed one marked."""
    base = tools_root()
    installed = None
    try:
        installed = bindings_version()
    except ToolsError:
        pass
    out = []
    for d in sorted(base.glob("llama-cpp-python-*")) if base.is_dir() else []:
        info = manifest(d.name.removeprefix("llama-cpp-python-"))
        if info is None:
            continue
        info["dir"] = str(d)
        info["installed"] = info["llama_cpp_python"] == installed
        info["programs"] = {p: str(d / "bin" / p) for p in PROGRAMS if (d / "bin" / p).is_file()}
        out.append(info)
    return out
