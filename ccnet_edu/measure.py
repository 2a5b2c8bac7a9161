"""Measuring time and peak memory: the one place where the library times and weighs a computation.

The benchmark of the fused operator (:mod:`ccnet_edu.ops.benchmark`), the
comparison tables (:mod:`ccnet_edu.analysis.compare`), the memory analysis
(:mod:`ccnet_edu.analysis.memory`) and the chapters all measure with these
functions, so a number means the same wherever it is printed.

**Time.**  :func:`time_ms` makes ``warmup`` untimed runs of a function, then
``repeats`` timed ones, and returns every timed run (:class:`Timing`: median,
fastest, slowest).  :func:`time_in_turn` times several functions side by
side: one run of each per round, the order rotating from round to round, so
that a slow spell of a shared machine falls on every function alike.  One run
is timed with CUDA events on a GPU (the device synchronised after it) and with
``time.perf_counter`` elsewhere.

**Peak memory** (:func:`peak_memory_of`): the bytes allocated *during* a
call above what was allocated before it, by one of three methods:

* ``"cuda"``: the caching allocator's statistics
  (``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``):
  every byte handed out to tensors, kernel workspaces included; not the
  allocator's cached-but-free reserve;
* ``"tracking"`` (CPU and ``meta``): :class:`StorageTracker`, a
  ``TorchDispatchMode`` that adds the size of every new storage an ATen
  operator returns and subtracts it when the storage is freed.  It does not
  see temporaries that a kernel allocates and frees inside one operator;
* ``"profiler"`` (CPU): the CPU allocator's own event log, recorded by
  ``torch.profiler`` with ``profile_memory=True``; it also sees the tensors a
  kernel allocates through that allocator inside one operator (the fused C++
  operator's ATen buffers), but not memory a kernel takes past it (the fused
  operator's per-thread scratch, ``std::vector`` and ``operator new``).
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ._checks import check_bool, check_callable, check_choice, check_device, check_float, check_int

__all__ = [
    "cpu_model",
    "Timing",
    "time_once_ms",
    "time_ms",
    "time_in_turn",
    "median_ms_in_turn",
    "LoadCheck",
    "load_average",
    "check_load",
    "StorageTracker",
    "PeakMemory",
    "PEAK_METHODS",
    "peak_memory_of",
]


# ---------------------------------------------------------------------------
# Time
# ---------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name, to print beside a measurement: /proc/cpuinfo's "model name"
    where there is one (Linux), with its "cpu family" and "model" numbers (a virtual
    machine's name can be as bare as "AMD EPYC"; the numbers still tell the core's
    generation), else what :mod:`platform` reports."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip() and fields:  # the end of the first processor's block
                    break
    except OSError:
        pass
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    numbers = [f"{name} {fields[key]}" for key, name in (("cpu family", "family"),
               ("model", "model")) if key in fields]  # fmt: skip
    return fields["model name"] + (f" ({', '.join(numbers)})" if numbers else "")


@dataclass(frozen=True)
class Timing:
    """The timed runs of one function, in milliseconds, in the order they ran."""

    samples_ms: tuple[float, ...]

    @property
    def runs(self) -> int:
        return len(self.samples_ms)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)

    @property
    def max_ms(self) -> float:
        return max(self.samples_ms)


def time_once_ms(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Milliseconds of one call of ``fn``: CUDA events on a CUDA device, else ``perf_counter``."""
    check_callable("fn", fn)
    return _once_ms(fn, check_device("device", device))


def _once_ms(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    start_s = time.perf_counter()
    fn()
    return (time.perf_counter() - start_s) * 1e3


def _check_repeats(repeats: object, warmup: object) -> tuple[int, int]:
    return check_int("repeats", repeats, minimum=1), check_int("warmup", warmup, minimum=0)


def time_ms(
    fn: Callable[[], object],
    device: torch.device | str = "cpu",
    *,
    repeats: int,
    warmup: int,
    budget_s: float | None = None,
) -> Timing:
    """``warmup`` untimed calls of ``fn``, then ``repeats`` timed ones.

    ``budget_s`` (seconds) stops the timed calls early once they have taken
    that long together; at least one call is always timed.
    """
    check_callable("fn", fn)
    device = check_device("device", device)
    repeats, warmup = _check_repeats(repeats, warmup)
    if budget_s is not None:
        check_float("budget_s", budget_s, minimum=0.0, exclusive_minimum=True)
    for _ in range(warmup):
        fn()
    samples = []
    start = time.perf_counter()
    for _ in range(repeats):
        samples.append(_once_ms(fn, device))
        if budget_s is not None and time.perf_counter() - start > budget_s:
            break
    return Timing(tuple(samples))


def time_in_turn(
    fns: Mapping[str, Callable[[], object]],
    device: torch.device | str = "cpu",
    *,
    repeats: int,
    warmup: int,
) -> dict[str, Timing]:
    """Time several functions in turn: one run of each per round, the order rotating.

    First ``warmup`` untimed calls of each.  Then in round ``r`` the functions
    run starting from the ``r % len(fns)``-th: on a shared machine a slow spell
    falls on every function alike instead of on whichever was being timed, so
    the ratios hold even when the absolute times drift.
    """
    if not isinstance(fns, Mapping):
        raise TypeError(f"fns must be a dict of name -> callable, got {type(fns).__name__}")
    if not fns:
        raise ValueError("fns must name at least one function to time")
    for name, fn in fns.items():
        check_callable(f"fns[{name!r}]", fn)
    device = check_device("device", device)
    repeats, warmup = _check_repeats(repeats, warmup)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(_once_ms(fns[name], device))
    return {name: Timing(tuple(t)) for name, t in samples.items()}


def median_ms_in_turn(
    fns: Mapping[str, Callable[[], object]],
    device: torch.device | str = "cpu",
    *,
    repeats: int = 20,
    warmup: int = 3,
) -> dict[str, float]:
    """Median wall time in milliseconds of each function, timed in turn.

    :func:`time_in_turn` (one run of each per round, the order rotating, after
    ``warmup`` untimed runs of each), reduced to each function's median.
    """
    return {
        name: timing.median_ms
        for name, timing in time_in_turn(fns, device, repeats=repeats, warmup=warmup).items()
    }


# ---------------------------------------------------------------------------
# Peak memory
# ---------------------------------------------------------------------------


def load_average() -> float:
    """The machine's load average over the last minute (the number of runnable processes)."""
    return os.getloadavg()[0]


@dataclass(frozen=True)
class LoadCheck:
    """The one-minute load average before and after a timing, and the CPUs it is judged against.

    ``busy`` is the book's single criterion for a timing run: the load exceeded the logical CPUs
    at its start or at its end, so other work competed with the code being timed.
    """

    before: float
    after: float
    cpus: int

    @property
    def busy(self) -> bool:
        """Whether the load exceeded the CPUs before or after the timing."""
        return max(self.before, self.after) > self.cpus

    def note(self) -> str:
        """One line: the loads, the CPUs and what they mean for the times printed with them."""
        loads = (
            f"load average (1 min) before {self.before:.1f}, after {self.after:.1f}, "
            f"on {self.cpus} logical CPUs"
        )
        if self.busy:
            return (
                f"{loads}: the machine was busy, other work competed with the timed code, so "
                "these times are not a measurement of it alone; rerun on a quiet machine"
            )
        return f"{loads}: the load stayed within the CPUs"


def check_load(before: float, cpus: int | None = None) -> LoadCheck:
    """Read the load now (after a timing) and judge it with ``before`` against ``cpus``.

    ``before`` is :func:`load_average` read before the timing; ``cpus`` defaults to
    ``os.cpu_count()``.
    """
    before = check_float("before", before, minimum=0.0)
    cpus = check_int("cpus", (os.cpu_count() or 1) if cpus is None else cpus, minimum=1)
    return LoadCheck(before=before, after=load_average(), cpus=cpus)


def _storage_key(tensor: torch.Tensor) -> int:
    # The address of the C++ StorageImpl: unique while the storage lives, and
    # defined on every device (data_ptr() is 0 for all meta tensors).
    return tensor.untyped_storage()._cdata


class StorageTracker(TorchDispatchMode):
    """Live bytes of the storages created by ATen operators while the mode is active.

    ``live`` and ``peak`` are in bytes above the state at entry; ``timeline``
    holds ``(operator, live bytes after it)`` when ``record=True``.
    """

    def __init__(self, record: bool = False) -> None:
        super().__init__()
        check_bool("record", record)
        self.live = 0
        self.peak = 0
        self.record = record
        self.timeline: list[tuple[str, int]] = []
        self._tracked: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        if key in self._tracked:
            self._tracked.discard(key)
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        # Outputs that alias an argument (views, in-place ops) allocate nothing new.
        aliased = {
            _storage_key(a) for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)
        }
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key in aliased or key in self._tracked:
                continue
            nbytes = storage.nbytes()
            self._tracked.add(key)
            self.live += nbytes
            weakref.finalize(storage, self._free, key, nbytes)
        self.peak = max(self.peak, self.live)
        if self.record:
            self.timeline.append((str(func), self.live))
        return out


@dataclass(frozen=True)
class PeakMemory:
    """Peak bytes above the starting point during a call, and how they were measured."""

    peak_bytes: int
    method: str  # "cuda allocator", "storage tracking" or "profiler"
    timeline: tuple[tuple[str, int], ...] = ()


PEAK_METHODS = ("auto", "tracking", "cuda", "profiler")


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2: the profiler's C++ side logs start/stop lines there."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _profiler_peak(fn: Callable[[], object]) -> int:
    activities = [torch.profiler.ProfilerActivity.CPU]
    with _quiet_stderr():
        with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
            fn()
    # Every allocation (+bytes) and free (-bytes) of the CPU allocator, in time order,
    # including the buffers the C++ operator allocates inside its kernel.
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return peak


def peak_memory_of(
    fn: Callable[[], object],
    device: torch.device | str = "cpu",
    method: str = "auto",
    record: bool = False,
) -> PeakMemory:
    """Peak bytes allocated during ``fn()`` above what was allocated before it.

    ``method``: ``"auto"`` (``"cuda"`` on a CUDA device, ``"tracking"``
    elsewhere), ``"cuda"``, ``"tracking"`` or ``"profiler"``, see the module
    docstring.  ``record`` keeps the ``(operator, live bytes)`` timeline
    (tracking only).
    """
    check_callable("fn", fn)
    device = check_device("device", device)
    check_choice("method", method, PEAK_METHODS)
    check_bool("record", record)
    if method == "auto":
        method = "cuda" if device.type == "cuda" else "tracking"
    if method == "cuda":
        if device.type != "cuda":
            raise ValueError(f"method='cuda' needs a CUDA device, got {device}")
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return PeakMemory(torch.cuda.max_memory_allocated(device) - start, "cuda allocator")
    if method == "profiler":
        return PeakMemory(_profiler_peak(fn), "profiler")
    tracker = StorageTracker(record=record)
    with tracker:
        fn()
    return PeakMemory(tracker.peak, "storage tracking", tuple(tracker.timeline))
