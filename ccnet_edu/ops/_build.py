"""Building and loading the C++/CUDA criss-cross operator (``csrc/``).

The sources are compiled on first use with ``torch.utils.cpp_extension.load``
(ninja).  Two libraries:

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

``CCNET_EDU_EXTRA_CFLAGS`` / ``CCNET_EDU_EXTRA_LDFLAGS`` append flags to the
CPU build (and to its key): ``make test`` uses them to build the library once
more under AddressSanitizer + UndefinedBehaviorSanitizer, and once with a
non-generic ``-mtune``, and runs the operator tests against each.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = [
    "BuildError",
    "BuildInfo",
    "ISA_INSTRUCTIONS",
    "ISA_LEVELS",
    "build_dir",
    "cpu_flags",
    "csrc_dir",
    "find_nvcc",
    "load_cpu",
    "load_cuda",
    "sanitized",
    "select_isa",
    "supported_isas",
]

#: Default GPU architecture when ``TORCH_CUDA_ARCH_LIST`` is unset. There is no
#: GPU to detect on a build machine, and every architecture costs a full nvcc
#: pass over the sources: one real architecture (Ampere, sm_80) plus PTX, which
#: the driver JIT-compiles for any newer GPU.
DEFAULT_CUDA_ARCH_LIST = "8.0+PTX"

CPU_SOURCES = ("cca_cpu.cpp",)
CUDA_SOURCES = ("cca_cuda.cu", "cca_cuda_lines.cu")
HEADERS = (
    "cca_common.h",
    "cca_portable.h",
    "cca_simd.h",
    "cca_cpu_kernels.h",
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
# C++ mode turns that off); -fopenmp because at::parallel_for is an inline OpenMP
# loop compiled into *our* code.
CPU_CFLAGS = ["-O3", "-ffp-contract=fast", "-fopenmp"]
CPU_LDFLAGS = ["-fopenmp"]


class BuildError(RuntimeError):
    """The operator could not be built, loaded or verified (the message says why)."""


@dataclass
class BuildInfo:
    """What :func:`load_cpu` / :func:`load_cuda` built: library path, timing, flags."""

    name: str
    library: Path
    seconds: float
    extra: dict = field(default_factory=dict)


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


def cpu_flags(isa: str | None = None) -> tuple[list[str], list[str]]:
    """The complete ``(cflags, ldflags)`` of the CPU library for ``isa`` (default: selected)."""
    isa = select_isa() if isa is None else isa
    cflags = CPU_CFLAGS + ISA_LEVELS[isa] + _extra("CCNET_EDU_EXTRA_CFLAGS")
    return cflags, CPU_LDFLAGS + _extra("CCNET_EDU_EXTRA_LDFLAGS")


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
) -> BuildInfo:
    src = csrc_dir()
    missing = [s for s in sources + HEADERS if not (src / s).exists()]
    if missing:
        raise BuildError(f"C++ sources not found in {src}: {missing}")
    cpp_extension = _cpp_extension()
    if shutil.which("ninja") is None and not _venv_ninja():
        raise BuildError("ninja is not installed (pip install ninja)")
    compiler = os.environ.get("CXX", "c++")
    parts = [
        f"torch {torch.__version__} {_flavour()}",
        _compiler_identity(compiler),
        "cflags " + " ".join(cflags),
        "ldflags " + " ".join(ldflags),
        "cuda_cflags " + " ".join(cuda_cflags),
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
    kwargs = dict(
        name=name,
        sources=[str(src / s) for s in sources],
        extra_include_paths=[str(src)],
        extra_cflags=cflags,
        extra_ldflags=ldflags,
        build_directory=str(directory),
        verbose=verbose,
        is_python_module=False,
        with_cuda=cuda,
    )
    if cuda:
        kwargs["extra_cuda_cflags"] = cuda_cflags
    try:
        cpp_extension.load(**kwargs)
    except Exception as error:  # compiler missing, compile or link error, unwritable files
        lines = str(error).strip().splitlines() or [type(error).__name__]
        raise BuildError(f"building {name} failed: {lines[-1]}") from error
    library = directory / f"{name}.so"
    return BuildInfo(
        name,
        library,
        time.perf_counter() - start,
        extra={"key": key, "cflags": cflags, "ldflags": ldflags, "directory": directory},
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


def load_cpu(verbose: bool = False) -> BuildInfo:
    """Build (if needed) and load the CPU library for :func:`select_isa`'s level.

    Raises:
        BuildError: no compiler, an unwritable cache, a compile or link error, or
            an ISA level this CPU lacks.
    """
    isa = select_isa()
    cflags, ldflags = cpu_flags(isa)
    info = _load(
        "ccnet_edu_cca_cpu",
        CPU_SOURCES,
        cuda=False,
        verbose=verbose,
        cflags=cflags,
        ldflags=ldflags,
        cuda_cflags=[],
        key_parts=[isa],
    )
    info.extra["isa"] = isa
    return info


def load_cuda(verbose: bool = False) -> BuildInfo:
    """Build (if needed) and load the CUDA library; raises :class:`BuildError`."""
    if sanitized():
        raise BuildError("the CPU library is built under a sanitizer: no CUDA build in this run")
    nvcc = find_nvcc()
    if nvcc is None:
        raise BuildError(
            "nvcc not found (set CUDA_HOME to a CUDA toolkit to build the GPU kernels)"
        )
    if torch.version.cuda is None:
        raise BuildError("this torch build has no CUDA support")
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)
    arch = os.environ["TORCH_CUDA_ARCH_LIST"]
    # No --use_fast_math: the GPU must compute exp() as the CPU does.  The host
    # code is built for the same ISA level as the CPU library.
    isa = select_isa()
    info = _load(
        "ccnet_edu_cca_cuda",
        CUDA_SOURCES,
        cuda=True,
        verbose=verbose,
        cflags=CPU_CFLAGS + ISA_LEVELS[isa],
        ldflags=CPU_LDFLAGS,
        cuda_cflags=["-O3"],
        key_parts=[isa, f"arch {arch}", _compiler_identity(nvcc)],
    )
    info.extra.update({"nvcc": nvcc, "arch": arch, "isa": isa})
    return info
