"""The GPU check's Python side: ``benchmarks/gpu_check.sh`` runs each subcommand as a step.

    wheels     --dest DIR          download the wheels the GPU machine lacks (``make gpu-wheels``)
    wheels-check --wheels DIR      is the set complete for the GPU machine's Python 3.12?
    wheels-install --wheels DIR --target DIR
                                   install them with ``--no-index`` into a scratch folder
    env        --out FILE          GPU, driver, torch, nvcc and the measured ceilings: env.json
    sanitize   [--small]           a small fused forward + backward, for compute-sanitizer
    tests      --log-dir DIR TARGET...
                                   pytest with a time limit per test, every test run
    bench      --csv FILE          the timing rows, each written as it is measured
    notebooks  --log-dir DIR NB... every notebook under nbval, in parallel
    report     --work DIR --out DIR
                                   gpu_check.md (the table) and summary.md

``--dry-run`` runs ``env``, ``sanitize`` and ``bench`` on the CPU at tiny sizes: it
checks the script, not the numbers.

The timing (bench) goes implementation by implementation, in this order: einsum
(mmcv's formulation, the baseline), fused (the tiled CUDA kernels), flex
(FlexAttention compiled), then, while time is left, fused-nhwc (the same kernels on
inputs already channels-last), reference (this library's readable PyTorch) and
portable (one thread per element), at (1, 64, 512, 97x97), (8, 64, 512, 97x97) and
(2, 64, 512, 128x256), float32 and bfloat16, forward and forward + backward (the
gradient of ``out``; the attention map unused, as in training).  Each implementation
is first checked against float64 on the same inputs; then it is warmed up
(compilation included) and timed with CUDA events, median of up to 20 runs, its
inputs rotated among three sets (the smallest problem's inputs would otherwise stay
in L2); its peak memory is the most allocated above the inputs.  Inputs are NCHW (as
1x1 convolutions give them).  A row starts only while the step's time limit leaves
room for it (1.5 times the implementation's slowest row so far).  The rows are timed
in a worker process: a row that crashes it, runs past its limit (45 s, the first flex
row 150 s) or leaves the GPU in an error state ends that implementation, and a fresh
worker goes on with the next one.  The floor of each row is the larger of bytes /
bandwidth and operations / rate (:mod:`ccnet_edu.roofline`) at the copy bandwidth and
matrix rates measured by ``env``: for flex, which writes no attention map, the out-only
count (``roofline.costs(..., attention=False)``); for the others, which write it (and the
fused backward reads it), the count with the map.
"""

from __future__ import annotations

import argparse
import csv
import email.parser
import faulthandler
import functools
import io
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ccnet_edu._io import atomic_write_text  # noqa: E402  (cheap: imports no torch)

# ------------------------------------------------------------------ the GPU machine

#: What the GPU machine's Python is: the wheels are chosen for it.
DEVICE_PYTHON = (3, 12)
#: Platform tags its glibc (Ubuntu 24.04's, 2.39) runs, best first: pip takes the first
#: that a project offers, and matches each tag exactly.
DEVICE_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_26_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_12_x86_64",
    "manylinux2010_x86_64",
    "manylinux_2_5_x86_64",
    "manylinux1_x86_64",
)
#: Environment markers of the GPU machine's interpreter (PEP 508).
DEVICE_MARKERS = {
    "implementation_name": "cpython",
    "implementation_version": "3.12.3",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_system": "Linux",
    "platform_version": "",
    "python_full_version": "3.12.3",
    "python_version": "3.12",
    "sys_platform": "linux",
}
#: The Python packages of the GPU machine's image (its package list as the workplace's
#: device notes gave it, read on 2026-11-17): a wheel for one of these is not carried.
IMAGE_PACKAGES = frozenset(
    """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
    botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
    coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
    diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
    frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
    hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
    jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
    linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl
    meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
    narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
    nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
    nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
    nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime
    onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
    orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
    prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
    pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
    pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich
    sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
    sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
    statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
    tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
    torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions
    typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
    """.split()
)
#: What the notebook step needs beyond the image: nbval runs a Jupyter kernel per notebook.
NOTEBOOK_REQUIREMENTS = ("nbval", "ipykernel", "ipywidgets")
#: The most the wheels may weigh: one device call carries 64 MiB, the checkout included.
WHEELS_LIMIT_MIB = 32.0


# ------------------------------------------------------------------ wheels


def canonical(name: str) -> str:
    """A project name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Wheel:
    """One wheel file: its project, version, tags and requirements (from its METADATA)."""

    path: Path
    name: str
    version: str
    tags: frozenset
    requires: list = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def read_wheel(path: Path) -> Wheel:
    """Parse ``path``'s file name and its ``*.dist-info/METADATA``."""
    from packaging.requirements import Requirement
    from packaging.utils import parse_wheel_filename

    name, version, _, tags = parse_wheel_filename(path.name)
    with zipfile.ZipFile(path) as archive:
        metadata = next(
            n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
        )
        message = email.parser.Parser().parsestr(archive.read(metadata).decode("utf-8"))
    requires = [Requirement(r) for r in message.get_all("Requires-Dist") or []]
    return Wheel(path, canonical(name), str(version), frozenset(tags), requires)


def device_tags() -> frozenset:
    """Every wheel tag the GPU machine's CPython 3.12 on x86-64 Linux installs."""
    from packaging import tags

    platforms = [*DEVICE_PLATFORMS, *(f"manylinux_2_{n}_x86_64" for n in range(5, 40))]
    platforms.append("linux_x86_64")
    return frozenset(
        [
            *tags.cpython_tags(DEVICE_PYTHON, ["cp312", "abi3", "none"], platforms),
            *tags.compatible_tags(DEVICE_PYTHON, "cp312", platforms),
        ]
    )


def closure(wheels: dict[str, Wheel], roots=NOTEBOOK_REQUIREMENTS) -> tuple[set[str], list[str]]:
    """The carried projects ``roots`` need on the GPU machine, and what is unmet.

    Requirements are followed through the wheels (markers evaluated for the GPU
    machine's Python, extras as requested); a project of the image ends the walk
    (its version there is not known here: ``pip check`` on the GPU machine says).
    """
    from packaging.requirements import Requirement

    needed: set[str] = set()
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    todo = [(Requirement(r), "the notebook step") for r in roots]
    while todo:
        requirement, wanted_by = todo.pop()
        name = canonical(requirement.name)
        if name in IMAGE_PACKAGES:
            continue
        wheel = wheels.get(name)
        if wheel is None:
            problems.append(f"{requirement} (for {wanted_by}): no wheel, and not in the image")
            continue
        if not requirement.specifier.contains(wheel.version, prereleases=True):
            problems.append(f"{requirement} (for {wanted_by}): the wheel is {wheel.version}")
        needed.add(name)
        for extra in ["", *sorted(requirement.extras)]:
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            for sub in wheel.requires:
                if sub.marker is None or sub.marker.evaluate({**DEVICE_MARKERS, "extra": extra}):
                    if extra and (sub.marker is None or "extra" not in str(sub.marker)):
                        continue  # the base requirements were walked with extra ""
                    todo.append((sub, f"{wheel.name} {wheel.version}"))
    return needed, problems


def _wheels_in(directory: Path) -> tuple[dict[str, Wheel], list[str]]:
    wheels: dict[str, Wheel] = {}
    problems = []
    for path in sorted(directory.glob("*.whl")):
        wheel = read_wheel(path)
        if wheel.name in wheels:
            problems.append(
                f"two versions of {wheel.name}: {wheels[wheel.name].path.name}, {path.name}"
            )
        wheels[wheel.name] = wheel
    return wheels, problems


def check_wheels(directory: Path, limit_mib: float = WHEELS_LIMIT_MIB) -> list[str]:
    """Problems of the wheel set in ``directory`` for the GPU machine (empty: none).

    Every wheel installs on CPython 3.12 / x86-64 Linux; one version per project;
    every requirement of the notebook step is met by a carried wheel of a fitting
    version or by the image; nothing unneeded; the total within ``limit_mib``.
    """
    if not directory.is_dir() or not any(directory.glob("*.whl")):
        return [f"no wheels in {directory}: run `make gpu-wheels`"]
    wheels, problems = _wheels_in(directory)
    supported = device_tags()
    for wheel in wheels.values():
        if not wheel.tags & supported:
            problems.append(f"{wheel.path.name} does not install on CPython 3.12, x86-64 Linux")
        if wheel.name in IMAGE_PACKAGES:
            problems.append(f"{wheel.path.name}: the image has {wheel.name} already")
    needed, unmet = closure(wheels)
    problems += unmet
    problems += [f"{wheels[n].path.name} is not needed" for n in sorted(set(wheels) - needed)]
    total = sum(w.size for w in wheels.values()) / 2**20
    print(f"{len(wheels)} wheels, {total:.1f} MiB (limit {limit_mib:.0f} MiB) in {directory}")
    if total > limit_mib:
        problems.append(f"the wheels weigh {total:.1f} MiB, over {limit_mib:.0f} MiB")
    return problems


def download_wheels(dest: Path, constraints: Path | None) -> list[str]:
    """Download the notebook step's wheels for the GPU machine into ``dest``.

    pip resolves the whole closure for CPython 3.12 on manylinux x86-64 (pinned by
    ``constraints`` where it names a project, so the kernel runs the versions the
    stored outputs were made with); the projects the image has are then left out.
    Wheels in ``dest`` that are no longer needed are removed.
    """
    with tempfile.TemporaryDirectory(prefix="gpu-wheels-") as staging:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--quiet",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            ".".join(map(str, DEVICE_PYTHON)),
            *(arg for p in DEVICE_PLATFORMS for arg in ("--platform", p)),
            "--dest",
            staging,
        ]
        if constraints is not None and constraints.is_file():
            command += ["--constraint", str(constraints)]
        subprocess.run([*command, *NOTEBOOK_REQUIREMENTS], check=True)
        wheels, problems = _wheels_in(Path(staging))
        needed, unmet = closure(wheels)
        if problems or unmet:
            return problems + unmet
        dest.mkdir(parents=True, exist_ok=True)
        keep = {wheels[n].path.name for n in needed}
        for old in dest.glob("*.whl"):
            if old.name not in keep:
                old.unlink()
        for name in sorted(keep):
            if not (dest / name).is_file():
                partial = dest / f".{name}.part"
                shutil.copyfile(Path(staging) / name, partial)
                partial.replace(dest / name)
    left_out = sorted(set(wheels) - needed)
    print(f"left out (in the image, or needed only by what is): {', '.join(left_out)}")
    return check_wheels(dest)


def install_wheels(directory: Path, target: Path, dry: bool) -> list[str]:
    """``pip install --no-index --no-deps --target``: the wheels this interpreter runs.

    On the GPU machine that is every wheel (anything else is a problem); in a dry
    run on another Python, the ones built for a newer Python are listed and left
    out (the modules then come from the running environment, if it has them).
    """
    from packaging import tags

    problems = check_wheels(directory)
    if problems and not any(directory.glob("*.whl")):
        return problems
    here = frozenset(tags.sys_tags())
    wheels, _ = _wheels_in(directory)
    fits = [w for w in wheels.values() if w.tags & here]
    misfits = sorted(w.path.name for w in wheels.values() if not w.tags & here)
    if misfits:
        note = f"{len(misfits)} wheels are not for Python {platform.python_version()}"
        if not dry:
            problems.append(f"{note}: {', '.join(misfits)}")
        print(f"{note}, left out: {', '.join(misfits)}")
    if target.exists():
        shutil.rmtree(target)
    command = [
        *(sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--quiet"),
        *("--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--target", str(target)),
        *(str(w.path) for w in fits),
    ]
    start = time.monotonic()
    result = subprocess.run(command)
    print(f"pip installed {len(fits)} wheels into {target} in {time.monotonic() - start:.1f} s")
    if result.returncode != 0:
        return [*problems, f"pip install exited {result.returncode}"]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}
    for module in ("nbval", "ipykernel", "ipywidgets", "jupyter_client", "nbformat", "zmq"):
        found = subprocess.run(
            [sys.executable, "-c", f"import {module}; print({module}.__file__)"],
            capture_output=True,
            text=True,
            env=environment,
        )
        where = found.stdout.strip() or found.stderr.strip().splitlines()[-1:]
        print(f"import {module}: {where}")
        if found.returncode != 0:
            problems.append(f"import {module} failed")
    check = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, env=environment
    )
    carried = set(wheels)
    pattern = re.compile(r"^(\S+) \S+ (?:requires|has requirement) ([A-Za-z0-9._-]+)")
    clashes = [
        line
        for line in check.stdout.splitlines()
        if (m := pattern.match(line)) and carried & {canonical(m[1]), canonical(m[2])}
    ]
    print(f"pip check: {len(check.stdout.splitlines())} lines, {len(clashes)} about the wheels")
    for line in clashes:
        print(f"  {line}")
    if clashes and not dry:
        problems.append(f"pip check: {len(clashes)} unmet requirements around the wheels")
    return problems


# ------------------------------------------------------------------ environment


def _run(command: list[str], timeout: float = 60) -> str:
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment() -> dict:
    """GPU, driver, torch, CUDA, nvcc, compute-sanitizer, the machine."""
    import torch

    from ccnet_edu.ops import find_nvcc

    sanitizer = shutil.which("compute-sanitizer") or next(
        (
            str(p)
            for pattern in (
                "cuda*/bin/compute-sanitizer",
                "cuda*/compute-sanitizer/compute-sanitizer",
            )
            for p in sorted(Path("/usr/local").glob(pattern))
        ),
        "compute-sanitizer",
    )
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "glibc": " ".join(platform.libc_ver()),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "git_commit": _run(["git", "-C", str(ROOT), "rev-parse", "HEAD"]) or "unknown",
        "nvcc": (_run([find_nvcc() or "nvcc", "--version"]).splitlines() or ["none"])[-1],
        "compute_sanitizer": (_run([sanitizer, "--version"]).splitlines() or ["none"])[-1],
        "gpu": "none",
        "driver": "none",
    }
    smi = _run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    )
    if smi:
        info["nvidia_smi"] = smi
        if smi.count(",") >= 1:
            info["driver"] = smi.split(",")[1].strip()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            l2_mib=round(getattr(props, "L2_cache_size", 0) / 2**20, 1),
        )
    return info


def ceilings(device, dry: bool) -> dict:
    """Measured copy bandwidth (bytes read + written) and matrix rates: METHOD's two ceilings.

    float32 is timed twice: with TF32 off (plain float32) and on (the tensor cores).
    """
    import torch

    from ccnet_edu import measure

    n = 2**20 if dry else 2**29  # 2 GiB of float32 on the GPU
    x = torch.randn(n, device=device)
    y = torch.empty_like(x)
    copy_ms = measure.time_ms(functools.partial(y.copy_, x), device, repeats=10, warmup=2)
    out = {"copy_TBps": 2 * x.numel() * 4 / (copy_ms.median_ms * 1e-3) / 1e12}
    del x, y
    size = 256 if dry else 8192
    previous = torch.backends.cuda.matmul.allow_tf32
    for name, dtype, tf32 in (
        ("bf16", torch.bfloat16, False),
        ("tf32", torch.float32, True),
        ("fp32", torch.float32, False),
    ):
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            ms = measure.time_ms(lambda a=a, b=b: a @ b, device, repeats=5, warmup=2).median_ms
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
        out[f"{name}_TFLOPs"] = 2 * size**3 / (ms * 1e-3) / 1e12
    return out


def env_command(out: Path, dry: bool) -> int:
    import torch

    info = environment()
    print(json.dumps(info, indent=1), flush=True)
    atomic_write_text(
        out, json.dumps(info, indent=1) + "\n"
    )  # something, even if what follows fails
    import matplotlib.font_manager  # noqa: F401  (its font cache, once, before parallel kernels)

    if not dry and not torch.cuda.is_available():
        print("no GPU visible to torch")
        return 2
    info["ceilings"] = ceilings(torch.device("cpu" if dry else "cuda"), dry)
    print(json.dumps(info["ceilings"], indent=1))
    atomic_write_text(out, json.dumps(info, indent=1) + "\n")
    return 0


# ------------------------------------------------------------------ sanitizer workload


def sanitize(device: str, small: bool) -> int:
    """Fused and portable forward + backward at a small odd size (C over one chunk, rows
    longer than a tile), every dtype; the fused ones twice, as planned for the device's L2
    (one slice at this size) and for an L2 that makes the backward accumulate dA over
    64-channel slices (64, 64, 8: ``CCNET_EDU_CUDA_L2_BYTES``), so that a later slice's
    reload of the accumulators runs under the sanitizer; ``small``: the tiled kernels only,
    float32 and bfloat16, one batch (for racecheck, which is slower)."""
    import torch

    from ccnet_edu import ops, roofline

    ops.load(cuda=device == "cuda")
    g = torch.Generator().manual_seed(0)
    dtypes = (torch.float32, torch.bfloat16)
    if not small:
        dtypes += (torch.float16, torch.float64)
    batch, qk, channels, height, width = (1, 16, 136, 5, 70) if small else (2, 16, 136, 9, 70)
    names = ("criss_cross_attention",) + (() if small else ("portable_criss_cross_attention",))
    shape = (batch, qk, channels, height, width)
    for dtype in dtypes:
        q, k = (torch.randn(batch, qk, height, width, generator=g).to(device, dtype) for _ in "qk")
        v, go = (
            torch.randn(batch, channels, height, width, generator=g).to(device, dtype) for _ in "vg"
        )
        ga = torch.randn(batch, height, width, height + width - 1, generator=g).to(device, dtype)
        size = 4 if dtype == torch.float32 else 2
        plans = [("device's L2", None)]
        if dtype != torch.float64:  # the tiled kernels
            plans.append(("dA in slices", str(2 * roofline.v4_kept_bytes(shape, size, 64))))
        runs = [
            (name, plan)
            for name in names
            for plan in (plans if "portable" not in name else plans[:1])
        ]
        for name, (label, l2) in runs:
            if l2 is None:
                os.environ.pop("CCNET_EDU_CUDA_L2_BYTES", None)
            else:
                os.environ["CCNET_EDU_CUDA_L2_BYTES"] = l2
            try:
                out, att = getattr(torch.ops.ccnet_edu, name)(q, k, v)
                grads = getattr(torch.ops.ccnet_edu, name + "_backward")(go, ga, att, q, k, v)
            finally:
                os.environ.pop("CCNET_EDU_CUDA_L2_BYTES", None)
            finite = all(bool(t.isfinite().all()) for t in (out, att, *grads))
            print(
                f"{device} {dtype} {name} ({label}): {'finite' if finite else 'NOT FINITE'}",
                flush=True,
            )
            if not finite:
                return 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 0


# ------------------------------------------------------------------ tests, a limit per test


def pytest_worker(limit: float, record: Path, args: list[str]) -> int:
    """pytest on ``args`` with :class:`_PerTestLimit`."""
    import pytest

    class _PerTestLimit:
        """Each test ends the process after ``limit`` seconds (faulthandler dumps every
        thread's stack to the real stderr first, also from inside a hung CUDA call);
        each test's start and outcome go to ``record`` as JSON lines, flushed, so the
        runner knows which test was running and starts the rest in a new process."""

        def __init__(self) -> None:
            self.handle = open(record, "a", buffering=1)  # noqa: SIM115  (closed at exit)
            self.stderr = os.fdopen(os.dup(2), "w")  # before pytest captures fd 2
            self.outcome: dict[str, tuple[str, str]] = {}

        def _write(self, entry: dict) -> None:
            self.handle.write(json.dumps(entry) + "\n")
            self.handle.flush()
            os.fsync(self.handle.fileno())

        def pytest_runtest_logreport(self, report) -> None:
            worst = self.outcome.get(report.nodeid, ("passed", ""))
            if report.failed:
                outcome = "failed" if report.when == "call" else "error"
                message = (report.longreprtext or "").strip().splitlines()[-1:] or [""]
                self.outcome[report.nodeid] = (outcome, message[0][:300])
            elif report.skipped and worst[0] == "passed":
                reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
                self.outcome[report.nodeid] = ("skipped", str(reason)[:300])

        @pytest.hookimpl(tryfirst=True)
        def pytest_runtest_protocol(self, item, nextitem) -> None:
            self._write({"id": item.nodeid, "event": "start", "time": time.time()})
            faulthandler.dump_traceback_later(limit, exit=True, file=self.stderr)

        def pytest_runtest_logfinish(self, nodeid, location) -> None:
            faulthandler.cancel_dump_traceback_later()
            outcome, message = self.outcome.pop(nodeid, ("passed", ""))
            self._write({"id": nodeid, "event": "end", "outcome": outcome, "message": message})

    return int(pytest.main(args, plugins=[_PerTestLimit()]))


def _collect(targets: list[str], log) -> list[str]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            *targets,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    log.write(result.stdout + result.stderr)
    ids = [line for line in result.stdout.splitlines() if "::" in line and line[:1] != " "]
    return list(dict.fromkeys(ids))  # a warnings summary repeats ids


def run_tests(targets: list[str], per_test: float, time_limit: float, log_dir: Path) -> int:
    """Every test in ``targets``, each under ``per_test`` seconds; a test that hangs or
    crashes its process is recorded and the rest go on in a new one, until
    ``time_limit``.  Writes ``tests.jsonl`` (each test's outcome) and
    ``tests_summary.json`` into ``log_dir``; returns 0 if every test passed or skipped."""
    end = time.monotonic() + time_limit
    log_dir.mkdir(parents=True, exist_ok=True)
    record = log_dir / "tests.jsonl"
    record.unlink(missing_ok=True)
    results: dict[str, dict] = {}
    with open(log_dir / "tests_pytest.log", "a") as log:
        ids = _collect(targets, log)
        remaining = list(ids)
        workers = 0
        while remaining and end - time.monotonic() > 5:
            workers += 1
            command = [
                *(sys.executable, str(Path(__file__).resolve()), "pytest-worker"),
                *("--limit", str(per_test), "--record", str(record), "--"),
                *("-p", "no:cacheprovider", "-rA", "-v", *targets),
                *(f"--deselect={test}" for test in results),
            ]
            log.write(f"\n==== worker {workers}: {len(remaining)} tests\n")
            log.flush()
            try:
                rc = subprocess.run(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                    timeout=end - time.monotonic(),
                ).returncode
            except subprocess.TimeoutExpired:
                rc = "killed at the step's time limit"
            started = {}
            for line in record.read_text().splitlines():
                entry = json.loads(line)
                if entry["event"] == "start":
                    started[entry["id"]] = entry["time"]
                elif entry["id"] not in results:
                    results[entry["id"]] = entry
            for test, when in started.items():
                if test not in results:
                    ran = time.time() - when
                    if isinstance(rc, str):
                        outcome = "not finished"
                    else:
                        outcome = "timeout" if ran >= per_test - 1 else "crashed"
                    results[test] = {
                        "id": test,
                        "outcome": outcome,
                        "message": f"{ran:.0f} s, worker rc {rc}",
                    }
            before = len(remaining)
            remaining = [t for t in remaining if t not in results]
            if len(remaining) == before:  # the worker ran nothing: collection failed
                break
    for test in remaining:
        results[test] = {
            "id": test,
            "outcome": "not run",
            "message": "step time limit or worker failure",
        }
    counts: dict[str, int] = {}
    for entry in results.values():
        counts[entry["outcome"]] = counts.get(entry["outcome"], 0) + 1
    bad = [e for e in results.values() if e["outcome"] not in ("passed", "skipped")]
    summary = {"collected": len(ids), "counts": counts, "workers": workers, "problems": bad}
    atomic_write_text(log_dir / "tests_summary.json", json.dumps(summary, indent=1) + "\n")
    print(
        f"{len(ids)} tests collected; " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    )
    for entry in bad:
        print(f"  {entry['outcome']}: {entry['id']}: {entry.get('message', '')}")
    return 0 if ids and not bad else 1


# ------------------------------------------------------------------ timing

DTYPE_NAMES = ("float32", "bfloat16")
DRY_SHAPES = ((1, 8, 24, 9, 11), (2, 8, 24, 9, 11), (1, 8, 24, 8, 16))
IMPLS = ("einsum", "fused", "flex", "fused-nhwc", "reference", "portable")
MODES = ("forward", "fwd_bwd")
FIELDS = (
    "impl",
    "shape",
    "dtype",
    "status",
    "rel_error",
    *(f"{m}_{k}" for m in MODES for k in ("ms", "runs", "peak_mib", "floor_ms")),
    "seconds",
)
#: Relative error of ``out`` against float64 (norm-wise) under which a row is timed;
#: FlexAttention's float32 dots may run as TF32 (about 3e-4).
TOL = {"float32": 1e-4, "bfloat16": 3e-2}
TOL_FLEX = {"float32": 1e-3, "bfloat16": 3e-2}
# A Python exception message that leaves the CUDA context unusable for what follows.
STICKY = re.compile(
    r"illegal (memory )?(access|address|instruction)|unspecified launch|device-side assert|"
    r"misaligned address",
    re.IGNORECASE,
)


def _impl_fn(impl: str):
    import torch

    from ccnet_edu import flex, ops
    from ccnet_edu import functional as Fn
    from ccnet_edu.ops import baselines

    class _Portable(torch.autograd.Function):
        """The portable kernels with their backward op (they have no registered autograd)."""

        @staticmethod
        def forward(ctx, q, k, v):
            out, att = torch.ops.ccnet_edu.portable_criss_cross_attention(q, k, v)
            ctx.save_for_backward(q, k, v, att)
            return out, att

        @staticmethod
        def backward(ctx, grad_out, grad_att):
            q, k, v, att = ctx.saved_tensors
            return torch.ops.ccnet_edu.portable_criss_cross_attention_backward(
                grad_out, grad_att, att, q, k, v
            )

    return {
        "einsum": baselines.einsum_criss_cross,
        "fused": ops.criss_cross_attention,
        "fused-nhwc": ops.criss_cross_attention,  # on inputs already channels-last
        "flex": flex.criss_cross_attention_flex,
        "reference": Fn.criss_cross_attention_reference,
        "portable": _Portable.apply,
    }[impl]


def _rel_error(got, want) -> float:
    got = got.double()
    if not bool(got.isfinite().all()):
        return float("inf")
    return ((got - want).norm() / want.norm()).item()


class _Cases:
    """Inputs (three sets) and the float64 ``out`` per (shape, dtype), made once."""

    def __init__(self, device, sets: int):
        self.device, self.sets, self.cache = device, sets, {}

    def get(self, shape, dtype_name):
        import torch

        from ccnet_edu import functional as Fn

        if (shape, dtype_name) not in self.cache:
            dtype = getattr(torch, dtype_name)
            batch, qk, channels, height, width = shape
            g = torch.Generator().manual_seed(zlib.crc32(repr((shape, dtype_name)).encode()))
            sets = []
            for _ in range(self.sets):  # drawn on the CPU: the same numbers on any device
                q, k = (torch.randn(batch, qk, height, width, generator=g) for _ in "qk")
                v, go = (torch.randn(batch, channels, height, width, generator=g) for _ in "vg")
                sets.append([t.to(self.device, dtype) for t in (q, k, v, go)])
            with torch.no_grad():
                want, _ = Fn.criss_cross_attention_reference(*(t.double() for t in sets[0][:3]))
            self.cache[shape, dtype_name] = (sets, want)
        return self.cache[shape, dtype_name]


def _time_row(fn, sets, want, tol, device, max_reps, max_s, row) -> None:
    import torch

    from ccnet_edu import measure

    q, k, v, _ = sets[0]
    with torch.no_grad():
        out, _ = fn(q, k, v)
    row["rel_error"] = _rel_error(out, want)
    del out
    if not row["rel_error"] <= tol:
        row["status"] = "WRONG: not timed"
        return
    leaves = [[t.detach().requires_grad_() for t in s[:3]] + [s[3]] for s in sets]

    def forward(q, k, v, go):
        with torch.no_grad():
            fn(q, k, v)

    def forward_backward(q, k, v, go):
        out, _ = fn(q, k, v)
        torch.autograd.grad(out, (q, k, v), go)

    for mode, step, args in (("forward", forward, sets), ("fwd_bwd", forward_backward, leaves)):
        for warm in range(2):  # compiles flex, loads modules, fills the allocator
            step(*args[warm % len(args)])
        times, start = [], time.monotonic()
        for rep in range(max_reps):
            run = functools.partial(step, *args[rep % len(args)])  # the input sets in turn
            times.append(measure.time_once_ms(run, device))
            if time.monotonic() - start > max_s:
                break
        row[f"{mode}_ms"] = statistics.median(times)
        row[f"{mode}_runs"] = len(times)
        if device.type == "cuda":
            peak = measure.peak_memory_of(functools.partial(step, *args[0]), device, "cuda")
            row[f"{mode}_peak_mib"] = peak.peak_bytes / 2**20
    row["status"] = "ok"


def read_rows(path: Path) -> list[dict]:
    """The rows of a timing CSV (missing file: none)."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _write_rows(path: Path, rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, text.getvalue())  # the whole table so far, as each row lands


#: A row that runs longer ends its worker (faulthandler dumps the stacks first): seconds,
#: the first row of an implementation (FlexAttention compiles in it) and any later one
#: (3 times the slowest so far, at least this).
ROW_LIMIT_FIRST = {"flex": 150.0}
ROW_LIMIT = 45.0
RUNNING = "running"


def bench(device_name: str, dry: bool, time_limit: float, csv_path: Path, env_path: Path,
          impls: tuple[str, ...]) -> int:  # fmt: skip
    """Run :func:`bench_worker` in a subprocess until every row is written or the time
    is up: a worker that dies in a row (a crash, a hang stopped by the row limit, a GPU
    error that leaves the context unusable) leaves that row marked in the CSV, and a
    fresh worker goes on with the next implementation."""
    end = time.monotonic() + time_limit
    for attempt in range(1, 7):
        left = end - time.monotonic()
        if left < 5:
            break
        command = [
            *(sys.executable, str(Path(__file__).resolve()), "bench-worker"),
            *("--csv", str(csv_path), "--env", str(env_path), "--impls", ",".join(impls)),
            *("--time-limit", f"{left:.1f}", *(["--dry-run"] if dry else [])),
        ]
        try:
            rc = subprocess.run(command, timeout=left + 5).returncode
        except subprocess.TimeoutExpired:
            rc = "killed"
        rows = read_rows(csv_path)
        if not any(r.get("status") == RUNNING for r in rows) and rc in (0, 1):
            return rc
        print(f"bench worker {attempt} ended (rc {rc}) in a row: a fresh one goes on", flush=True)
    return 1


def bench_worker(device_name: str, dry: bool, time_limit: float, csv_path: Path,
                 env_path: Path, impls: tuple[str, ...]) -> int:  # fmt: skip
    """Time each implementation in turn (see the module docstring).  Rows already in
    ``csv_path`` are kept; a row left ``running`` by a worker that died is marked so, and
    its implementation is not run again.  Returns 3 after an error that leaves the GPU
    unusable (the supervisor starts a fresh worker)."""
    import torch

    from ccnet_edu import ops, roofline

    end = time.monotonic() + time_limit
    device = torch.device(device_name)
    shapes = DRY_SHAPES if dry else roofline.SHAPES
    rows = read_rows(csv_path)
    for row in rows:
        if row.get("status") == RUNNING:
            row["status"] = "died in this row (a crash, a hang, or a GPU error): see bench.log"
            _mark(rows, row["impl"], shapes, "not run: an earlier row of this implementation died")
    _write_rows(csv_path, rows)
    done = {(r["impl"], r["shape"], r["dtype"]) for r in rows}
    config = torch._dynamo.config  # room for every shape and dtype of flex
    limit_name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, limit_name, 64)
    try:
        ops.load(cuda=device.type == "cuda")
        load_error = None
    except Exception as error:  # the fused rows say why; einsum and flex still run
        load_error = f"{type(error).__name__}: {str(error)[:160]}"
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    measured = env.get("ceilings") or ceilings(device, dry)
    # the ceilings measured on this GPU, in the datasheets' form (FLOP/s, bytes/s)
    here = roofline.Ceiling(
        "measured",
        measured["copy_TBps"] * 1e12,
        measured["bf16_TFLOPs"] * 1e12,
        measured["tf32_TFLOPs"] * 1e12,
        measured["fp32_TFLOPs"] * 1e12,
        "measured in this run",
    )
    max_reps, max_s = (3, 0.3) if dry else (20, 0.6)
    cases = _Cases(device, 1 if dry else 3)
    slowest: dict[str, float] = {}
    for impl in impls:
        for shape in shapes:
            for dtype_name in DTYPE_NAMES:
                shape_name = "x".join(map(str, shape))
                if (impl, shape_name, dtype_name) in done:
                    continue
                row = {"impl": impl, "shape": shape_name, "dtype": dtype_name}
                size = 4 if dtype_name == "float32" else 2
                rate = roofline.peak_rate(here, size)
                for mode, name in zip(MODES, ("forward", "forward+backward"), strict=True):
                    # flex returns out alone (its map is not computed unless asked for):
                    # the out-only count; the others write and read the attention
                    cost = roofline.costs(shape, size, name, attention=impl != "flex")
                    floor = roofline.floor_seconds(cost, here.bandwidth, rate)
                    row[f"{mode}_floor_ms"] = 1e3 * max(floor)
                left, need = end - time.monotonic(), max(3.0, 1.5 * slowest.get(impl, 0.0))
                start = time.monotonic()
                rows.append(row)
                if left < need:
                    row["status"] = f"skipped: {left:.0f} s left, the row needs about {need:.0f}"
                elif load_error and impl in ("fused", "fused-nhwc", "portable"):
                    row["status"] = f"failed: {load_error}"
                else:
                    row["status"] = RUNNING  # what stays if this process dies in the row
                    _write_rows(csv_path, rows)
                    first = ROW_LIMIT_FIRST.get(impl, ROW_LIMIT)
                    limit = max(ROW_LIMIT, 3 * slowest[impl]) if impl in slowest else first
                    faulthandler.dump_traceback_later(max(1.0, min(limit, left)), exit=True)
                    try:
                        sets, want = cases.get(shape, dtype_name)
                        if impl == "fused-nhwc":
                            sets = [
                                [t.contiguous(memory_format=torch.channels_last) for t in s]
                                for s in sets
                            ]
                        tol = (TOL_FLEX if impl == "flex" else TOL)[dtype_name]
                        _time_row(_impl_fn(impl), sets, want, tol, device, max_reps, max_s, row)
                    except Exception as error:  # a failure is a row of the table, not the end
                        row["status"] = f"failed: {type(error).__name__}: {str(error)[:160]}"
                        if device.type == "cuda" and STICKY.search(str(error)):
                            _mark(rows, impl, shapes, "not run: an earlier row left a GPU error")
                            _write_rows(csv_path, rows)
                            print(_row_line(row), "\n  the GPU is in an error state", flush=True)
                            return 3
                    finally:
                        faulthandler.cancel_dump_traceback_later()
                    slowest[impl] = max(slowest.get(impl, 0.0), time.monotonic() - start)
                row["seconds"] = time.monotonic() - start
                _write_rows(csv_path, rows)
                print(_row_line(row), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


def _mark(rows: list[dict], impl: str, shapes, status: str) -> None:
    have = {(r["impl"], r["shape"], r["dtype"]) for r in rows}
    for shape in shapes:
        for dtype_name in DTYPE_NAMES:
            key = (impl, "x".join(map(str, shape)), dtype_name)
            if key not in have:
                rows.append(dict(zip(("impl", "shape", "dtype"), key, strict=True), status=status))


def _num(x) -> float | None:
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _fmt(x, spec: str) -> str:
    value = _num(x)
    return "-" if value is None else format(value, spec)


def _row_line(row: dict) -> str:
    return (
        f"{row['impl']:>10} {row['shape']:>16} {row['dtype']:>8}  "
        f"fwd {_fmt(row.get('forward_ms'), '8.3f')} ms  "
        f"fwd+bwd {_fmt(row.get('fwd_bwd_ms'), '8.3f')} ms  "
        f"err {_fmt(row.get('rel_error'), '.1e')}  {row.get('status', '')}"
    )


# ------------------------------------------------------------------ notebooks


def _stored_seconds(notebook: Path) -> float:
    """How long the notebook's stored run took (its cells' execution times)."""
    try:
        cells = json.loads(notebook.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return 0.0
    stamps = sorted(
        v
        for c in cells
        for k, v in c.get("metadata", {}).get("execution", {}).items()
        if k in ("iopub.execute_input", "shell.execute_reply")
    )
    if not stamps:
        return 0.0
    from datetime import datetime

    def parse(s: str) -> datetime:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))

    return (parse(stamps[-1]) - parse(stamps[0])).total_seconds()


def _junit_counts(path: Path) -> dict:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    return counts


def run_notebooks(
    notebooks: list[Path], jobs: int, time_limit: float, log_dir: Path, threads: int
) -> int:
    """nbval on each notebook, ``jobs`` at a time, longest first (by its stored run),
    each its own pytest process with its own IPython folder; all stopped at
    ``time_limit``.  Each writes ``nb_<name>.xml`` (JUnit) and ``nb_<name>.log`` (-rA);
    ``notebooks.xml`` merges the reports, ``notebooks_summary.json`` counts them."""
    end = time.monotonic() + time_limit
    log_dir.mkdir(parents=True, exist_ok=True)
    pending = sorted(notebooks, key=_stored_seconds, reverse=True)
    running: dict[Path, tuple[subprocess.Popen, float, object]] = {}
    results: dict[str, dict] = {}
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "TORCHINDUCTOR_COMPILE_THREADS": "1",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    while pending or running:
        while pending and len(running) < jobs:
            notebook = pending.pop(0)
            stem = notebook.stem
            scratch = log_dir.parent / "kernels" / stem  # IPython's files: not logs
            scratch.mkdir(parents=True, exist_ok=True)
            log = open(log_dir / f"nb_{stem}.log", "w")  # noqa: SIM115  (closed below)
            left = max(1, int(end - time.monotonic()))
            command = [
                *(sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env"),
                *("-p", "no:cacheprovider", "-rA", f"--nbval-cell-timeout={left}"),
                f"--junitxml={log_dir / f'nb_{stem}.xml'}",
                str(notebook),
            ]
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
                env={
                    **environment,
                    "IPYTHONDIR": str(scratch / "ipython"),
                    "JUPYTER_RUNTIME_DIR": str(scratch / "runtime"),
                },
            )
            running[notebook] = (process, time.monotonic(), log)
            print(f"started {notebook.name}", flush=True)
        time.sleep(0.5)
        for notebook, (process, start, log) in list(running.items()):
            rc = process.poll()
            if rc is None and time.monotonic() < end:
                continue
            if rc is None:
                _stop(process)
                rc = "killed at the step's time limit"
            log.close()
            del running[notebook]
            entry = {"rc": rc, "seconds": round(time.monotonic() - start, 1)}
            entry.update(_junit_counts(log_dir / f"nb_{notebook.stem}.xml"))
            results[notebook.name] = entry
            print(f"{notebook.name}: {json.dumps(entry)}", flush=True)
        if time.monotonic() >= end:
            for notebook in pending:
                results[notebook.name] = {"rc": "not started: step time limit"}
            pending = []
    merged = ET.Element("testsuites")
    for notebook in sorted(results):
        path = log_dir / f"nb_{Path(notebook).stem}.xml"
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError):
            continue
        for suite in [root] if root.tag == "testsuite" else root.iter("testsuite"):
            suite.set("name", notebook)
            merged.append(suite)
    atomic_write_text(log_dir / "notebooks.xml", ET.tostring(merged, encoding="unicode") + "\n")
    atomic_write_text(log_dir / "notebooks_summary.json", json.dumps(results, indent=1) + "\n")
    return 0 if results and all(e["rc"] == 0 for e in results.values()) else 1


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group (pytest and its kernel), SIGKILL 5 s later."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
            process.wait(wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


# ------------------------------------------------------------------ report


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def table(rows: list[dict], compact: bool = False) -> list[str]:
    """Markdown: one line per row; einsum's time over the row's (above 1: faster);
    ``compact``: times, ratios and status only."""
    einsum = {(r["shape"], r["dtype"]): r for r in rows if r["impl"] == "einsum"}
    lines = [
        "| impl | B x C' x C x H x W | dtype | fwd ms | fwd+bwd ms | einsum/impl fwd | "
        "einsum/impl f+b | fwd peak MiB | f+b peak MiB | floor fwd / f+b ms | rel. error | "
        "status |",
        "|" + "---|" * 12,
    ]
    if compact:
        lines = [
            "| impl | B x C' x C x H x W | dtype | fwd ms | fwd+bwd ms | einsum/impl fwd | "
            "einsum/impl f+b | status |",
            "|" + "---|" * 8,
        ]
    for r in rows:
        e = einsum.get((r["shape"], r["dtype"]), {})
        ratio = {}
        for mode in MODES:
            mine, theirs = _num(r.get(f"{mode}_ms")), _num(e.get(f"{mode}_ms"))
            ratio[mode] = theirs / mine if mine and theirs else None
        if compact:
            lines.append(
                f"| {r['impl']} | {r['shape']} | {r['dtype']} | "
                f"{_fmt(r.get('forward_ms'), '.3f')} | "
                f"{_fmt(r.get('fwd_bwd_ms'), '.3f')} | {_fmt(ratio['forward'], '.2f')} | "
                f"{_fmt(ratio['fwd_bwd'], '.2f')} | {r.get('status', '')} |"
            )
            continue
        lines.append(
            f"| {r['impl']} | {r['shape']} | {r['dtype']} | {_fmt(r.get('forward_ms'), '.3f')} | "
            f"{_fmt(r.get('fwd_bwd_ms'), '.3f')} | {_fmt(ratio['forward'], '.2f')} | "
            f"{_fmt(ratio['fwd_bwd'], '.2f')} | {_fmt(r.get('forward_peak_mib'), '.1f')} | "
            f"{_fmt(r.get('fwd_bwd_peak_mib'), '.1f')} | "
            f"{_fmt(r.get('forward_floor_ms'), '.3f')} / "
            f"{_fmt(r.get('fwd_bwd_floor_ms'), '.3f')} | "
            f"{_fmt(r.get('rel_error'), '.1e')} | {r.get('status', '')} |"
        )
    return lines


def verdict(rows: list[dict], gpu: str = "a GPU") -> str:
    """Whether the fused operator beat einsum in every (shape, dtype, pass) of the table,
    on ``gpu`` (``"none"``: a dry run's CPU rows, which say nothing about CUDA)."""
    if gpu == "none":
        return "a dry run on the CPU: these rows say nothing about the fused operator on CUDA"
    einsum = {(r["shape"], r["dtype"]): r for r in rows if r["impl"] == "einsum"}
    wins = pairs = 0
    missing = []
    for r in rows:
        if r["impl"] != "fused":
            continue
        for mode in MODES:
            mine = _num(r.get(f"{mode}_ms"))
            theirs = _num(einsum.get((r["shape"], r["dtype"]), {}).get(f"{mode}_ms"))
            if mine is None or theirs is None:
                missing.append(f"{r['shape']} {r['dtype']} {mode}")
                continue
            pairs += 1
            wins += mine < theirs
    expected = 2 * len(einsum) or 1
    answer = "yes" if pairs == expected and wins == pairs and not missing else "no"
    return (
        f"on {gpu}, fused faster than einsum in {wins} of {pairs} measured (shape, dtype, pass) "
        f"pairs{f', {len(missing)} not measured' if missing else ''}: "
        f"`'cuda'` in `ccnet_edu.ops.MEASURED_FASTER`: {answer}"
    )


def report(work: Path, out: Path) -> str:
    """Write ``gpu_check.md`` and ``summary.md`` into ``out``; return the summary."""
    logs = work / "logs"
    env = _read_json(out / "env.json")
    rows = read_rows(out / "gpu_check.csv")
    c = env.get("ceilings", {})
    ceiling_line = (
        f"Measured ceilings: copy {c['copy_TBps']:.2f} TB/s (read + write), matrix products "
        f"bf16 {c['bf16_TFLOPs']:.0f}, tf32 {c['tf32_TFLOPs']:.0f}, fp32 (TF32 off) "
        f"{c['fp32_TFLOPs']:.1f} TFLOP/s; floor = max(bytes / copy, FLOPs / rate), the rate "
        "bf16 for bfloat16 and tf32 / 3 (3xTF32) for float32; flex's floor is the out-only "
        "count (no attention map written or read; its backward reads out and computes the "
        "energies again), so it can sit above or below the others' floor."
        if c
        else "No ceilings were measured (see the env step's log)."
    )
    header = (
        f"GPU {env.get('gpu', '?')} (driver {env.get('driver', '?')}, "
        f"{env.get('multiprocessors', '?')} SMs, compute capability {env.get('capability', '?')}), "
        f"torch {env.get('torch', '?')} (CUDA {env.get('torch_cuda', '?')}), "
        f"{env.get('nvcc', '?')}, Python {env.get('python', '?')}, commit "
        f"{str(env.get('git_commit', '?'))[:12]}, {env.get('date', '?')}."
    )
    gpu_md = [
        "# Criss-cross attention on a GPU: `bash benchmarks/gpu_check.sh`",
        "",
        header,
        "",
        *table(rows),
        "",
        ceiling_line,
        "",
        verdict(rows, env.get("gpu", "a GPU")) + ".",
        "",
    ]
    if rows:
        atomic_write_text(out / "gpu_check.md", "\n".join(gpu_md))
    lines = ["# gpu_check summary", "", header, "", "## Steps", ""]
    lines += ["| step | rc | seconds | limit s | note |", "|---|---|---|---|---|"]
    for line in (
        (logs / "steps.tsv").read_text().splitlines() if (logs / "steps.tsv").is_file() else []
    ):
        name, rc, seconds, limit, note = (line.split("\t") + [""] * 5)[:5]
        lines.append(f"| {name} | {rc} | {seconds} | {limit} | {note} |")
    wheels = logs / "wheels.log"
    lines += ["", "## Wheels (the notebooks' Jupyter stack)", ""]
    if wheels.is_file():
        lines += [
            f"- {line}"
            for line in wheels.read_text(errors="replace").splitlines()
            if re.match(r"(\d+ wheels|pip |problem|wheels:)", line)
        ]
    else:
        lines.append("No log.")
    tests = _read_json(logs / "tests_summary.json")
    lines += ["", "## Tests (tests/test_gpu.py and the GPU tests of tests/test_ops.py)", ""]
    if tests:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(tests["counts"].items()))
        lines.append(f"{tests['collected']} collected: {counts}.")
        lines += [
            f"- {p['outcome']}: `{p['id']}`: {p.get('message', '')[:200]}"
            for p in tests["problems"][:10]
        ]
        if len(tests["problems"]) > 10:
            lines.append(f"- and {len(tests['problems']) - 10} more (tests.jsonl in logs.tar.gz)")
    else:
        lines.append("No test summary (see tests.log).")
    lines += ["", "## compute-sanitizer", ""]
    for tool in ("memcheck", "racecheck"):
        text = (
            (logs / f"{tool}.log").read_text(errors="replace")
            if (logs / f"{tool}.log").is_file()
            else ""
        )
        found = re.findall(r"(?:ERROR|RACECHECK) SUMMARY:.*", text)
        lines.append(
            f"- {tool}: {found[-1] if found else (text.strip().splitlines() or ['no log'])[-1]}"
        )
    notebooks = _read_json(logs / "notebooks_summary.json")
    lines += ["", "## Notebooks (nbval, in parallel)", ""]
    if notebooks:
        lines += [
            "| notebook | rc | seconds | cells | failed | errors | skipped |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, e in notebooks.items():
            lines.append(
                f"| {name} | {e.get('rc')} | {e.get('seconds', '-')} | {e.get('tests', '-')} | "
                f"{e.get('failures', '-')} | {e.get('errors', '-')} | {e.get('skipped', '-')} |"
            )
    else:
        lines.append("No notebook summary (see notebooks.log).")
    lines += ["", "## Timing", ""]
    if rows:
        lines += [*table(rows, compact=True), "", verdict(rows, env.get("gpu", "a GPU")) + "."]
        lines += ["", "The full table (peak memory, floors, errors): gpu_check.md."]
    else:
        lines.append("No rows (see bench.log).")
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "summary.md", text)
    return text


# ------------------------------------------------------------------ entry point


def _time_limit(default: float) -> float:
    """The step's limit from gpu_check.sh (GPU_CHECK_STEP_LIMIT), less a margin to finish."""
    limit = float(os.environ.get("GPU_CHECK_STEP_LIMIT", default))
    return max(1.0, limit - max(3.0, 0.05 * limit))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("wheels", help="download the wheels (make gpu-wheels)")
    p.add_argument("--dest", type=Path, default=ROOT / ".gpu-wheels")
    p.add_argument("--constraints", type=Path, default=ROOT / "constraints.txt")
    p = sub.add_parser("wheels-check", help="is the wheel set complete for the GPU machine?")
    p.add_argument("--wheels", type=Path, default=ROOT / ".gpu-wheels")
    p = sub.add_parser("wheels-install", help="install the wheels into a scratch folder")
    p.add_argument("--wheels", type=Path, default=ROOT / ".gpu-wheels")
    p.add_argument("--target", type=Path, required=True)
    p.add_argument("--dry-run", action="store_true")
    p = sub.add_parser("env", help="environment and ceilings into env.json")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dry-run", action="store_true")
    p = sub.add_parser("sanitize", help="the compute-sanitizer workload")
    p.add_argument("--small", action="store_true")
    p.add_argument("--dry-run", action="store_true")
    p = sub.add_parser("tests", help="pytest with a limit per test")
    p.add_argument("--log-dir", type=Path, required=True)
    p.add_argument("--per-test", type=float, default=90.0)
    p.add_argument("targets", nargs="+")
    p = sub.add_parser("pytest-worker", help=argparse.SUPPRESS)
    p.add_argument("--limit", type=float, required=True)
    p.add_argument("--record", type=Path, required=True)
    p.add_argument("args", nargs=argparse.REMAINDER)
    for name in ("bench", "bench-worker"):
        p = sub.add_parser(name, help="the timing rows" if name == "bench" else argparse.SUPPRESS)
        p.add_argument("--csv", type=Path, required=True)
        p.add_argument("--env", type=Path, required=True)
        p.add_argument("--dry-run", action="store_true")
        p.add_argument("--impls", default=",".join(IMPLS))
        p.add_argument("--time-limit", type=float, default=None)
    p = sub.add_parser("notebooks", help="nbval on notebooks, in parallel")
    p.add_argument("--log-dir", type=Path, required=True)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS per kernel")
    p.add_argument("notebooks", nargs="+", type=Path)
    p = sub.add_parser("report", help="gpu_check.md and summary.md")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    def problems_rc(problems: list[str]) -> int:
        for problem in problems:
            print(f"problem: {problem}")
        print("wheels: ok" if not problems else f"wheels: {len(problems)} problems")
        return 1 if problems else 0

    if args.command == "wheels":
        return problems_rc(download_wheels(args.dest, args.constraints))
    if args.command == "wheels-check":
        return problems_rc(check_wheels(args.wheels))
    if args.command == "wheels-install":
        return problems_rc(install_wheels(args.wheels, args.target, args.dry_run))
    if args.command == "env":
        return env_command(args.out, args.dry_run)
    if args.command == "sanitize":
        return sanitize("cpu" if args.dry_run else "cuda", args.small)
    if args.command == "tests":
        return run_tests(args.targets, args.per_test, _time_limit(600), args.log_dir)
    if args.command == "pytest-worker":
        rest = args.args[1:] if args.args[:1] == ["--"] else args.args
        return pytest_worker(args.limit, args.record, rest)
    if args.command in ("bench", "bench-worker"):
        limit = args.time_limit if args.time_limit is not None else _time_limit(600)
        impls = tuple(i for i in args.impls.split(",") if i)
        unknown = sorted(set(impls) - set(IMPLS))
        if unknown:
            parser.error(f"--impls: unknown {unknown}; expected some of {list(IMPLS)}")
        device = "cpu" if args.dry_run else "cuda"
        run = bench if args.command == "bench" else bench_worker
        return run(device, args.dry_run, limit, args.csv, args.env, impls)
    if args.command == "notebooks":
        return run_notebooks(
            args.notebooks, args.jobs, _time_limit(600), args.log_dir, args.threads
        )
    if args.command == "report":
        print(report(args.work, args.out))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
