"""Building and loading the C++/CUDA criss-cross operator (``csrc/``).

The sources are compiled on first use with ``torch.utils.cpp_extension.load``
(ninja) into a cache directory keyed by the torch version and CUDA flavour,
``~/.cache/ccnet_edu/torch-<version>-<cu130|cpu>/<library>-<hash of the csrc path>/``
(override the first part with the environment variable ``CCNET_EDU_BUILD_DIR``).
Two libraries:

* ``ccnet_edu_cca_cpu``  -- the schemas, the CPU kernels and the portable path;
  needs only a C++ compiler.
* ``ccnet_edu_cca_cuda`` -- the CUDA kernels; built when ``nvcc`` is found.

Both are plain shared libraries that register ``torch.ops.ccnet_edu.*`` when
loaded (no Python module), so the CPU operator loads on its own when there is
no ``nvcc``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["BuildError", "BuildInfo", "build_dir", "csrc_dir", "find_nvcc", "load_cpu", "load_cuda"]

#: Default GPU architecture when ``TORCH_CUDA_ARCH_LIST`` is unset. There is no
#: GPU to detect on a build machine, and every architecture costs a full nvcc
#: pass over the sources: one real architecture (Ampere, sm_80) plus PTX, which
#: the driver JIT-compiles for any newer GPU.
DEFAULT_CUDA_ARCH_LIST = "8.0+PTX"

CPU_SOURCES = ("cca_cpu.cpp",)
CUDA_SOURCES = ("cca_cuda.cu",)
HEADERS = ("cca_common.h", "cca_portable.h")

# -O3 and the host's vector units (AVX2 + FMA here); -ffp-contract=fast lets g++
# fuse a * b + c into one FMA as nvcc does (ISO C++ mode turns that off);
# -fopenmp because at::parallel_for is an inline OpenMP loop compiled into *our* code.
CPU_CFLAGS = ["-O3", "-march=x86-64-v3", "-mtune=generic", "-ffp-contract=fast", "-fopenmp"]
CPU_LDFLAGS = ["-fopenmp"]


class BuildError(RuntimeError):
    """The operator could not be built or loaded (the message says why)."""


@dataclass
class BuildInfo:
    """What :func:`load_cpu` / :func:`load_cuda` built: library path and timing."""

    name: str
    library: Path
    seconds: float
    extra: dict = field(default_factory=dict)


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


def _flavour() -> str:
    cuda = torch.version.cuda
    return f"cu{cuda.replace('.', '')}" if cuda else "cpu"


def build_dir() -> Path:
    """The build cache directory (``CCNET_EDU_BUILD_DIR`` or ``~/.cache/ccnet_edu/...``)."""
    override = os.environ.get("CCNET_EDU_BUILD_DIR")
    if override:
        return Path(override)
    version = torch.__version__.split("+")[0]
    return Path.home() / ".cache" / "ccnet_edu" / f"torch-{version}-{_flavour()}"


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


def _load(name: str, sources: tuple[str, ...], *, cuda: bool, verbose: bool) -> BuildInfo:
    cpp_extension = _cpp_extension()
    if shutil.which("ninja") is None and not _venv_ninja():
        raise BuildError("ninja is not installed (pip install ninja)")
    # One subdirectory per source tree: two checkouts sharing the cache would
    # otherwise rebuild each other's library on every load.
    tree = hashlib.sha1(str(csrc_dir()).encode()).hexdigest()[:8]
    directory = build_dir() / f"{name}-{tree}"
    directory.mkdir(parents=True, exist_ok=True)
    src = csrc_dir()
    missing = [s for s in sources + HEADERS if not (src / s).exists()]
    if missing:
        raise BuildError(f"C++ sources not found in {src}: {missing}")
    start = time.perf_counter()
    kwargs = dict(
        name=name,
        sources=[str(src / s) for s in sources],
        extra_include_paths=[str(src)],
        extra_cflags=CPU_CFLAGS,
        extra_ldflags=CPU_LDFLAGS,
        build_directory=str(directory),
        verbose=verbose,
        is_python_module=False,
        with_cuda=cuda,
    )
    if cuda:
        # No --use_fast_math: the GPU must compute exp() as the CPU does.
        kwargs["extra_cuda_cflags"] = ["-O3"]
    try:
        cpp_extension.load(**kwargs)
    except Exception as error:  # compiler missing, compile or link error
        raise BuildError(
            f"building {name} failed: {str(error).strip().splitlines()[-1]}"
        ) from error
    library = directory / f"{name}.so"
    return BuildInfo(name, library, time.perf_counter() - start)


def _venv_ninja() -> bool:
    try:
        import ninja  # noqa: F401

        return True
    except ImportError:
        return False


def load_cpu(verbose: bool = False) -> BuildInfo:
    """Build (if needed) and load the CPU library; raises :class:`BuildError`."""
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        raise BuildError("no C++ compiler found (set CXX or install g++)")
    return _load("ccnet_edu_cca_cpu", CPU_SOURCES, cuda=False, verbose=verbose)


def load_cuda(verbose: bool = False) -> BuildInfo:
    """Build (if needed) and load the CUDA library; raises :class:`BuildError`."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise BuildError(
            "nvcc not found (set CUDA_HOME to a CUDA toolkit to build the GPU kernels)"
        )
    if torch.version.cuda is None:
        raise BuildError("this torch build has no CUDA support")
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)
    info = _load("ccnet_edu_cca_cuda", CUDA_SOURCES, cuda=True, verbose=verbose)
    info.extra = {"nvcc": nvcc, "arch": os.environ["TORCH_CUDA_ARCH_LIST"]}
    return info
