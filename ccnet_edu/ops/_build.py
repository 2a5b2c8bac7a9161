"""Building and loading the C++/CUDA criss-cross operator (``csrc/``).

The sources are compiled on first use with the ninja builder of
``torch.utils.cpp_extension`` (that of its ``load``, without the loading: a library is
verified before it is loaded, see below).  Two libraries:

* ``ccnet_edu_cca_cpu``  -- the schemas, the CPU kernels and the portable path;
  needs only a C++ compiler.
* ``ccnet_edu_cca_cuda`` -- the CUDA kernels; built when ``nvcc`` is found.

Both are plain shared libraries that register ``torch.ops.ccnet_edu.*`` when
loaded (no Python module), so the CPU operator loads on its own when there is
no ``nvcc``.

**ISA levels.**  The CPU library is never built for "the machine at hand"
(the compiler's ``native`` target): a library built on one CPU would then crash, or compute
differently, on another that shares the cache (a home directory on a
cluster), and the compiler's tuning for one CPU model is a second source of
code-generation differences.  It is built for an explicit level instead, the
widest one the CPU running the build supports (:func:`select_isa`):

* ``x86-64-v4`` -- AVX-512 (F, BW, CD, DQ, VL) on top of v3: the kernels'
  vectors are 512 bits wide (16 floats); ``-mtune=generic``;
* ``x86-64-v3`` -- AVX2 + FMA (+ BMI, F16C, ...): 256-bit vectors (8 floats);
* ``x86-64``    -- baseline x86-64 (SSE2) for CPUs without AVX2;
* ``portable``  -- the compiler's default target on any other architecture
  (aarch64, ...).

The kernels are written once (``cca_cpu_kernels.h``) over a vector type whose
width each level fixes (``cca_simd.h``).  v3 and v4 compute bit-identical
results: every output is the same chain of fused multiply-adds in the same
order, only the number of outputs side by side differs, and the softmax sums in
one fixed order in both.  The x86-64 and portable builds agree with them to
rounding (the baseline x86-64 has no FMA instruction).

``CCNET_EDU_CPU_ISA`` picks a level by hand (it must be one the CPU runs).

**The cache** lives in ``~/.cache/ccnet_edu/`` (or ``CCNET_EDU_BUILD_DIR``),
one directory per library and *content key*: a hash of the torch version and
CUDA flavour, the compiler's path and ``--version``, the complete flag list,
the ISA level and the bytes of every source and header in ``csrc/``.  So a
source edit always rebuilds, whatever the file times say; a different
compiler, flag or ISA never reuses a library; and two checkouts with
identical sources share one build.

**OpenMP is optional.**  ``at::parallel_for`` is an inline OpenMP loop compiled into
*this* library, so with ``-fopenmp`` the kernels run on torch's intra-op threads.  A
compiler without OpenMP (Debian's or Apple's clang without libomp) is detected by
compiling and linking a tiny OpenMP program (:func:`compiler_has_openmp`, cached per
compiler identity); the library is then built without ``-fopenmp`` and
``at::parallel_for`` runs its loop inline, on one thread.  :class:`BuildInfo` says which
(``openmp``, ``threading``), and the choice is part of the cache key.

**Verified before loaded.**  A library is loaded only when its SHA-256 digest and size
match the record written beside it (``<library>.verified.json``) when it was built and
self-tested.  A missing record or a mismatch (a truncated copy, a full disk, flipped
bytes) rebuilds it in a fresh staging directory, whose output replaces the damaged file
with one atomic rename: ``torch.ops.load_library`` never maps a file that was not
verified, and ninja never sees a damaged output as up to date.

``CCNET_EDU_EXTRA_CFLAGS`` / ``CCNET_EDU_EXTRA_LDFLAGS`` append flags to the
CPU build (and to its key): ``make test`` uses them to build the library once
more under AddressSanitizer + UndefinedBehaviorSanitizer, and once with a
non-generic ``-mtune``, and runs the operator tests against each.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import inspect
import json
import logging
import os
import platform
import re
import secrets
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = [
    "BuildError",
    "BuildInfo",
    "ISA_INSTRUCTIONS",
    "ISA_LEVELS",
    "build_dir",
    "compiler_has_openmp",
    "cpu_flags",
    "csrc_dir",
    "cuda_arch_list",
    "find_nvcc",
    "first_error",
    "load_cpu",
    "load_cuda",
    "load_verified",
    "record_verified",
    "sanitized",
    "select_isa",
    "supported_isas",
    "unverified",
]

#: GPU architecture when ``TORCH_CUDA_ARCH_LIST`` is unset and no GPU is present to
#: ask (:func:`cuda_arch_list`). Every architecture costs a full nvcc pass over the
#: sources: one real architecture (Ampere, sm_80) plus PTX, which the driver
#: JIT-compiles for any newer GPU.
DEFAULT_CUDA_ARCH_LIST = "8.0+PTX"

CPU_SOURCES = ("cca_cpu.cpp",)
CUDA_SOURCES = ("cca_cuda.cu", "cca_cuda_lines.cu")
HEADERS = (
    "cca_common.h",
    "cca_portable.h",
    "cca_simd.h",
    "cca_cpu_kernels.h",
    "cca_cpu_phases.h",
    "cca_tiling.h",
    "cca_lines.h",
    "cca_lines_cuda.h",
    "cca_cuda_lines.h",
)

#: ISA level -> its compiler flags, widest first.
ISA_LEVELS: dict[str, list[str]] = {
    "x86-64-v4": ["-march=x86-64-v4", "-mtune=generic"],
    "x86-64-v3": ["-march=x86-64-v3", "-mtune=generic"],
    "x86-64": ["-march=x86-64", "-mtune=generic"],
    "portable": [],
}
#: ISA level -> the vector instructions its build of the kernels uses (csrc/cca_simd.h).
ISA_INSTRUCTIONS: dict[str, str] = {
    "x86-64-v4": "AVX-512, 16 floats per vector",
    "x86-64-v3": "AVX2 + FMA, 8 floats per vector",
    "x86-64": "SSE2, 4 floats per vector",
    "portable": "compiler-vectorised C++, 16-byte vectors",
}
# The x86-64-v3 and -v4 levels as /proc/cpuinfo spells their features (lzcnt is "abm").
_X86_64_V3_FEATURES = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
_X86_64_V4_FEATURES = _X86_64_V3_FEATURES | {
    "avx512f",
    "avx512bw",
    "avx512cd",
    "avx512dq",
    "avx512vl",
}

# -O3; -ffp-contract=fast lets g++ fuse a * b + c into one FMA as nvcc does (ISO
# C++ mode turns that off).
CPU_CFLAGS = ["-O3", "-ffp-contract=fast"]
CPU_LDFLAGS: list[str] = []
# Added when the compiler has OpenMP: at::parallel_for is an inline OpenMP loop
# compiled into *our* code.
OPENMP_FLAGS = ["-fopenmp"]


class BuildError(RuntimeError):
    """The operator could not be built, loaded or verified (the message says why)."""


@dataclass
class BuildInfo:
    """What :func:`load_cpu` / :func:`load_cuda` built: library path, timing, flags.

    ``openmp``: whether the library was compiled with OpenMP; ``threading``: how its
    CPU loops run (torch's OpenMP threads, or inline on one thread); ``rebuilt``: why a
    cached library was rebuilt (it failed verification), else ``None``.
    """

    name: str
    library: Path
    seconds: float
    extra: dict = field(default_factory=dict)
    openmp: bool = False
    threading: str = ""
    rebuilt: str | None = None


# ------------------------------------------------------------------ sources


def csrc_dir() -> Path:
    """The C++/CUDA sources: ``<repo>/csrc`` in a source checkout (editable install),
    else where a wheel put them, ``share/ccnet_edu/csrc`` under the install's prefix
    (found through the distribution's file list, so ``--user`` and ``--prefix``
    installs work too)."""
    checkout = Path(__file__).resolve().parents[2] / "csrc"
    if (checkout / "cca_cpu.cpp").is_file():
        return checkout
    try:
        files = importlib.metadata.distribution("ccnet-edu").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == "cca_cpu.cpp" and "csrc" in file.parts:
            return Path(file.locate()).resolve().parent
    return Path(sysconfig.get_path("data")) / "share" / "ccnet_edu" / "csrc"  # for the error


# ------------------------------------------------------------------ ISA levels


@functools.lru_cache(maxsize=1)
def _cpu_features() -> frozenset[str]:
    """The CPU's feature flags (Linux: /proc/cpuinfo), or an empty set when unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def supported_isas() -> list[str]:
    """The ISA levels this CPU can run, widest first."""
    if not _is_x86():
        return ["portable"]
    features = _cpu_features()
    if not features:  # no /proc/cpuinfo (macOS, ...): ask torch's own dispatcher
        capability = torch.backends.cpu.get_cpu_capability()
        v4, v3 = capability == "AVX512", capability in ("AVX2", "AVX512")
    else:
        v4, v3 = _X86_64_V4_FEATURES <= features, _X86_64_V3_FEATURES <= features
    return (["x86-64-v4"] if v4 else []) + (["x86-64-v3"] if v3 else []) + ["x86-64"]


def select_isa() -> str:
    """The ISA level to build for: ``CCNET_EDU_CPU_ISA``, else the widest supported one.

    Raises:
        BuildError: ``CCNET_EDU_CPU_ISA`` names an unknown level or one this CPU lacks.
    """
    supported = supported_isas()
    wanted = os.environ.get("CCNET_EDU_CPU_ISA", "").strip()
    if not wanted:
        return supported[0]
    if wanted not in ISA_LEVELS:
        raise BuildError(
            f"CCNET_EDU_CPU_ISA={wanted!r} is not an ISA level; expected one of {list(ISA_LEVELS)}"
        )
    if wanted not in supported:
        raise BuildError(
            f"CCNET_EDU_CPU_ISA={wanted!r}: this CPU ({platform.machine()}) runs only {supported}"
        )
    return wanted


def _extra(variable: str) -> list[str]:
    return shlex.split(os.environ.get(variable, ""))


def _compiler() -> str:
    """The C++ compiler torch's extension builder uses: ``CXX``, else ``c++``."""
    return os.environ.get("CXX", "c++")


def cpu_flags(isa: str | None = None, openmp: bool | None = None) -> tuple[list[str], list[str]]:
    """The complete ``(cflags, ldflags)`` of the CPU library for ``isa`` (default: selected).

    ``openmp``: add ``-fopenmp``; ``None`` asks :func:`compiler_has_openmp` about ``CXX``.
    """
    isa = select_isa() if isa is None else isa
    if openmp is None:
        openmp = compiler_has_openmp(_compiler())
    omp = OPENMP_FLAGS if openmp else []
    cflags = CPU_CFLAGS + omp + ISA_LEVELS[isa] + _extra("CCNET_EDU_EXTRA_CFLAGS")
    return cflags, CPU_LDFLAGS + omp + _extra("CCNET_EDU_EXTRA_LDFLAGS")


# A parallel region that needs omp.h and the OpenMP runtime: a compiler that merely
# ignores the pragma, or lacks the header or the library, fails to compile or link it.
_OPENMP_PROBE = """\
#include <omp.h>
int main() {
  int n = 0;
#pragma omp parallel reduction(+ : n)
  n += 1;
  return n > 0 && omp_get_max_threads() > 0 ? 0 : 1;
}
"""


@functools.lru_cache(maxsize=8)
def compiler_has_openmp(compiler: str) -> bool:
    """Whether ``compiler`` compiles and links an OpenMP program with ``-fopenmp``.

    The answer is cached per compiler identity (path and ``--version``) in memory and
    in ``<build dir>/probes/`` (when writable), so a process pays the try-compile once
    per compiler.

    Raises:
        BuildError: the compiler is not found or does not run.
    """
    identity = _compiler_identity(compiler)
    digest = hashlib.sha256(f"{identity}\0{_OPENMP_PROBE}\0{OPENMP_FLAGS}".encode())
    record = build_dir() / "probes" / f"openmp-{digest.hexdigest()[:16]}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        answer = json.loads(record.read_text())["openmp"]
        if isinstance(answer, bool):
            return answer
    path = identity.split("\n", 1)[0]
    with tempfile.TemporaryDirectory(prefix="ccnet_edu_openmp_") as tmp:
        source = Path(tmp) / "probe.cpp"
        source.write_text(_OPENMP_PROBE)
        try:
            result = subprocess.run(
                [path, *OPENMP_FLAGS, str(source), "-o", str(Path(tmp) / "probe")],
                capture_output=True,
                text=True,
                timeout=120,
            )
            answer = result.returncode == 0
        except (OSError, subprocess.SubprocessError):
            answer = False
    with contextlib.suppress(OSError):
        from .._io import atomic_write_text

        record.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, json.dumps({"compiler": identity, "openmp": answer}) + "\n")
    return answer


def _threading(openmp: bool) -> str:
    if openmp:
        return "OpenMP: at::parallel_for runs on torch's intra-op threads"
    return "no OpenMP: at::parallel_for runs its loop inline, on one thread"


def sanitized() -> bool:
    """Whether the extra flags build the CPU library under a sanitizer."""
    return any(f.startswith("-fsanitize") for f in _extra("CCNET_EDU_EXTRA_CFLAGS"))


# ------------------------------------------------------------------ the cache


def _flavour() -> str:
    cuda = torch.version.cuda
    return f"cu{cuda.replace('.', '')}" if cuda else "cpu"


def build_dir() -> Path:
    """The build cache root (``CCNET_EDU_BUILD_DIR`` or ``~/.cache/ccnet_edu``)."""
    override = os.environ.get("CCNET_EDU_BUILD_DIR")
    if override:
        return Path(override)
    return Path.home() / ".cache" / "ccnet_edu"


@functools.lru_cache(maxsize=8)
def _compiler_identity(compiler: str) -> str:
    path = shutil.which(compiler)
    if path is None:
        raise BuildError(f"compiler {compiler!r} not found (set CXX or install g++)")
    try:
        version = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise BuildError(f"compiler {path} does not run: {error}") from error
    return f"{os.path.realpath(path)}\n{version}"


def content_key(parts: list[str], sources: list[Path]) -> str:
    """SHA-256 over ``parts`` (versions, compiler, flags) and the bytes of ``sources``."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    for source in sorted(sources):
        h.update(source.name.encode())
        h.update(b"\0")
        h.update(source.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def _all_sources(src: Path) -> list[Path]:
    return sorted(p for p in src.iterdir() if p.suffix in (".cpp", ".cu", ".h", ".cuh"))


# ------------------------------------------------------------------ building


def find_nvcc() -> str | None:
    """Path of ``nvcc``, after pointing ``CUDA_HOME`` at /usr/local/cuda when unset.

    torch's own autodetection can settle on a directory without the CUDA
    libraries (here it picked ``/usr/local``), and linking then fails.
    """
    if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ:
        if Path("/usr/local/cuda/bin/nvcc").exists():
            os.environ["CUDA_HOME"] = "/usr/local/cuda"
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _cpp_extension():
    # Imported lazily and after find_nvcc(): the module reads CUDA_HOME on import.
    find_nvcc()
    # On import it logs "No CUDA runtime is found" to stderr on GPU-less machines:
    # true, expected, and noise in notebooks (nbval compares stderr).
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension as cpp_extension
    finally:
        logger.setLevel(level)

    home = os.environ.get("CUDA_HOME")
    if home:
        cpp_extension.CUDA_HOME = home
    return cpp_extension


def _writable_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BuildError(
            f"cannot create the build directory {directory} ({error.strerror or error}); "
            f"set CCNET_EDU_BUILD_DIR to a writable directory"
        ) from error
    if not os.access(directory, os.W_OK | os.X_OK):
        raise BuildError(
            f"the build directory {directory} is not writable; "
            f"set CCNET_EDU_BUILD_DIR to a writable directory"
        )


# ------------------------------------------------------------------ verification


def _record_path(library: Path) -> Path:
    return library.with_name(library.name + ".verified.json")


def _digest(path: Path) -> tuple[str, int]:
    """SHA-256 (hex) and size in bytes of the file at ``path``."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def unverified(library: Path) -> str | None:
    """``None`` when ``library`` matches its record (digest and size), else why not."""
    record = _record_path(library)
    if not library.is_file():
        return "not built yet"
    try:
        data = json.loads(record.read_text())
        expected = (str(data["sha256"]), int(data["size"]))
    except FileNotFoundError:
        return f"{library.name} has no verification record"
    except (OSError, ValueError, KeyError, TypeError):
        return f"the verification record of {library.name} is unreadable"
    try:
        digest, size = _digest(library)
    except OSError as error:
        return f"{library.name} cannot be read ({error.strerror or error})"
    if size != expected[1]:
        return f"{library.name} has {size} bytes, its record says {expected[1]}"
    if digest != expected[0]:
        return f"the SHA-256 of {library.name} differs from its record"
    return None


def record_verified(library: Path, measured: tuple[str, int] | None = None, **details: str) -> None:
    """Write ``library``'s digest and size beside it (atomically), with ``details``.

    ``measured``: the ``(sha256, size)`` taken when the file was built, else read now.
    """
    from .._io import atomic_write_text

    digest, size = measured if measured is not None else _digest(library)
    text = json.dumps({"sha256": digest, "size": size, **details}, indent=1) + "\n"
    atomic_write_text(_record_path(library), text)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (released by the kernel if the holder dies)."""
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): builds of one key are not serialised
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def load_verified(
    library: Path,
    build: Callable[[Path], None],
    load: Callable[[Path], object],
    check: Callable[[], str] | None = None,
) -> tuple[object, str | None]:
    """Load ``library`` only once it is verified; (re)build it when it is not.

    ``build(staging)`` must write a fresh ``staging / library.name`` (a new directory
    each time, so nothing damaged is reused); it then replaces ``library`` with one atomic
    rename, is loaded with ``load(library)``, checked with ``check()`` (which returns a
    word for the record, such as ``"passed"``, or raises) and recorded.  Builds of one
    library are serialised by a lock beside it.

    Returns:
        ``(what load returned, why it was rebuilt)``; the reason is ``None`` after a
        first build or a verified cache hit.
    """
    if unverified(library) is None:
        result = load(library)
        if check is not None:
            check()
        return result, None
    with _locked(library.with_name(library.name + ".lock")):
        reason = unverified(library)  # another process may have built it meanwhile
        if reason is None:
            result = load(library)
            if check is not None:
                check()
            return result, None
        for stale in library.parent.glob(f".{library.name}.staging-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed build
        staging = library.with_name(f".{library.name}.staging-{secrets.token_hex(4)}")
        staging.mkdir()
        try:
            build(staging)
            measured = _digest(staging / library.name)  # as the linker wrote it
            os.replace(staging / library.name, library)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        result = load(library)
        outcome = "not run"
        try:
            if check is not None:
                outcome = check()
        except Exception as error:
            outcome = f"failed: {(str(error).splitlines() or [''])[0]}"
            raise
        finally:
            record_verified(library, measured, check=outcome)
    rebuilt = None if reason == "not built yet" else reason
    if rebuilt is not None:
        warnings.warn(f"ccnet_edu: rebuilt {library} ({rebuilt})", RuntimeWarning, stacklevel=3)
    return result, rebuilt


def first_error(output: str) -> str:
    """The first line of compiler or linker ``output`` that reports an error."""
    pattern = re.compile(
        r"\berror\b\s*:|\berror\b\s*#|undefined reference|cannot find -l|"
        r"fatal error|\bld(\.\w+)?: ",
        re.IGNORECASE,
    )
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if pattern.search(line) and not line.startswith(("ninja:", "FAILED:")):
            return line
    return lines[-1] if lines else "(no output)"


def _explain_failure(name: str, error: Exception) -> str:
    """A build failure: the first error line, then the command that failed."""
    text = str(error)
    lines = text.splitlines()
    command = None
    for index, line in enumerate(lines):
        if line.startswith("FAILED:") and index + 1 < len(lines):
            command = lines[index + 1].strip()
            break
    message = f"building {name} failed: {first_error(text)}"
    if command:
        message += f"\n  command: {command}"
    return message


def _ninja_build(
    cpp_extension,
    name: str,
    sources: list[str],
    include: str,
    staging: Path,
    *,
    cuda: bool,
    verbose: bool,
    cflags: list[str],
    ldflags: list[str],
    cuda_cflags: list[str],
    arch: str | None,
) -> None:
    """Compile and link ``staging/<name>.so`` with torch's ninja builder, without loading it.

    torch's public ``load`` always loads what it built; its builder underneath is used
    here so that a library is verified first (the keyword arguments it does not know in
    this torch version are left out).
    """
    builder = getattr(cpp_extension, "_write_ninja_file_and_build_library", None)
    if builder is None:
        raise BuildError(
            f"torch {torch.__version__} has no ninja builder "
            "(torch.utils.cpp_extension._write_ninja_file_and_build_library)"
        )
    kwargs = dict(
        name=name,
        sources=sources,
        extra_cflags=cflags,
        extra_cuda_cflags=cuda_cflags,
        extra_sycl_cflags=[],
        extra_ldflags=ldflags,
        extra_include_paths=[include],
        build_directory=str(staging),
        verbose=verbose,
        with_cuda=cuda,
        with_sycl=False,
        is_standalone=False,
    )
    accepted = inspect.signature(builder).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    saved = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if arch is not None:
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch  # read by the builder's nvcc flags
    try:
        builder(**kwargs)
    except Exception as error:  # compiler missing, compile or link error, unwritable files
        raise BuildError(_explain_failure(name, error)) from error
    finally:
        if arch is not None:
            if saved is None:
                os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
            else:
                os.environ["TORCH_CUDA_ARCH_LIST"] = saved


def _load_library(path: Path) -> None:
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError) as error:
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise BuildError(f"loading {path} failed: {first}") from error


def _load(
    name: str,
    sources: tuple[str, ...],
    *,
    cuda: bool,
    verbose: bool,
    cflags: list[str],
    ldflags: list[str],
    cuda_cflags: list[str],
    key_parts: list[str],
    openmp: bool,
    arch: str | None = None,
    check: Callable[[], str] | None = None,
) -> BuildInfo:
    src = csrc_dir()
    missing = [s for s in sources + HEADERS if not (src / s).exists()]
    if missing:
        raise BuildError(f"C++ sources not found in {src}: {missing}")
    cpp_extension = _cpp_extension()
    if shutil.which("ninja") is None and not _venv_ninja():
        raise BuildError("ninja is not installed (pip install ninja)")
    parts = [
        f"torch {torch.__version__} {_flavour()}",
        _compiler_identity(_compiler()),
        "cflags " + " ".join(cflags),
        "ldflags " + " ".join(ldflags),
        "cuda_cflags " + " ".join(cuda_cflags),
        f"openmp {openmp}",
        *key_parts,
    ]
    key = content_key(parts, _all_sources(src))
    tag = key_parts[0] if key_parts else "any"
    directory = build_dir() / f"{name}-{tag}-{key[:16]}"
    _writable_directory(directory)
    # Build from a copy of the sources inside the build directory: the key already says
    # they are these bytes, and the compiler then sees the same paths from every
    # checkout, so identical checkouts share one library instead of rebuilding it in turn.
    src = _copy_sources(src, directory / "src")
    start = time.perf_counter()

    def build(staging: Path) -> None:
        _ninja_build(
            cpp_extension,
            name,
            [str(src / s) for s in sources],
            str(src),
            staging,
            cuda=cuda,
            verbose=verbose,
            cflags=cflags,
            ldflags=ldflags,
            cuda_cflags=cuda_cflags,
            arch=arch,
        )

    library = directory / f"{name}.so"
    try:
        _, rebuilt = load_verified(library, build, _load_library, check)
    except OSError as error:  # the staging directory, the rename or the record
        raise BuildError(f"building {name} in {directory} failed: {error}") from error
    return BuildInfo(
        name,
        library,
        time.perf_counter() - start,
        extra={"key": key, "cflags": cflags, "ldflags": ldflags, "directory": directory},
        openmp=openmp,
        threading=_threading(openmp),
        rebuilt=rebuilt,
    )


def _copy_sources(src: Path, target: Path) -> Path:
    try:
        target.mkdir(exist_ok=True)
        for source in _all_sources(src):
            copy = target / source.name
            data = source.read_bytes()
            if not copy.is_file() or copy.read_bytes() != data:
                partial = copy.with_name(f".{copy.name}.{os.getpid()}")
                partial.write_bytes(data)
                partial.replace(copy)  # atomic: a concurrent build never sees half a file
    except OSError as error:
        raise BuildError(f"cannot copy the sources into {target}: {error}") from error
    return target


def _venv_ninja() -> bool:
    try:
        import ninja  # noqa: F401

        return True
    except ImportError:
        return False


def load_cpu(verbose: bool = False, check: Callable[[], str] | None = None) -> BuildInfo:
    """Build (if needed), verify and load the CPU library for :func:`select_isa`'s level.

    ``check``: run right after loading (the self-test); a fresh build is recorded as
    verified with what it returns (or the first line of what it raised).

    Raises:
        BuildError: no compiler, an unwritable cache, a compile or link error, or
            an ISA level this CPU lacks.
    """
    isa = select_isa()
    openmp = compiler_has_openmp(_compiler())
    cflags, ldflags = cpu_flags(isa, openmp)
    info = _load(
        "ccnet_edu_cca_cpu",
        CPU_SOURCES,
        cuda=False,
        verbose=verbose,
        cflags=cflags,
        ldflags=ldflags,
        cuda_cflags=[],
        key_parts=[isa],
        openmp=openmp,
        check=check,
    )
    info.extra["isa"] = isa
    return info


def cuda_arch_list() -> str:
    """The architectures to build for: ``TORCH_CUDA_ARCH_LIST``, else the GPU present.

    Without the variable, the compute capability of the current GPU plus PTX (``9.0`` ->
    ``9.0+PTX``: native code for this GPU, PTX for newer ones); without a GPU,
    :data:`DEFAULT_CUDA_ARCH_LIST`.  The kernels use no architecture-specific (``sm_90a``)
    features, so the plain architecture is enough.
    """
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if arch:
        return arch
    try:
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return f"{major}.{minor}+PTX"
    except (RuntimeError, AssertionError):  # a driver that cannot answer
        pass
    return DEFAULT_CUDA_ARCH_LIST


def load_cuda(verbose: bool = False, check: Callable[[], str] | None = None) -> BuildInfo:
    """Build (if needed), verify and load the CUDA library; raises :class:`BuildError`."""
    if sanitized():
        raise BuildError("the CPU library is built under a sanitizer: no CUDA build in this run")
    nvcc = find_nvcc()
    if nvcc is None:
        raise BuildError(
            "nvcc not found (set CUDA_HOME to a CUDA toolkit to build the GPU kernels)"
        )
    if torch.version.cuda is None:
        raise BuildError("this torch build has no CUDA support")
    arch = cuda_arch_list()
    # No --use_fast_math: the GPU must compute exp() as the CPU does.  The host
    # code is built for the same ISA level as the CPU library.
    isa = select_isa()
    openmp = compiler_has_openmp(_compiler())
    omp = OPENMP_FLAGS if openmp else []
    info = _load(
        "ccnet_edu_cca_cuda",
        CUDA_SOURCES,
        cuda=True,
        verbose=verbose,
        cflags=CPU_CFLAGS + omp + ISA_LEVELS[isa],
        ldflags=CPU_LDFLAGS + omp,
        cuda_cflags=["-O3"],
        key_parts=[isa, f"arch {arch}", _compiler_identity(nvcc)],
        openmp=openmp,
        arch=arch,
        check=check,
    )
    info.extra.update({"nvcc": nvcc, "arch": arch, "isa": isa})
    return info
