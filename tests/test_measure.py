"""ccnet_edu.measure: the timing and peak-memory functions every table and chapter uses."""

from __future__ import annotations

import time

import pytest
import torch

from ccnet_edu import measure

MIB = 2**20


def test_time_in_turn_rotates_the_order_after_the_warmup():
    """Warm-up runs of each first, then one run of each per round, the order rotating."""
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    timings = measure.time_in_turn(fns, "cpu", repeats=3, warmup=1)
    assert "".join(calls) == "abc" + "abc" + "bca" + "cab"
    assert list(timings) == ["a", "b", "c"]
    assert all(t.runs == 3 and min(t.samples_ms) >= 0 for t in timings.values())


def test_median_ms_in_turn_is_the_median_of_time_in_turn():
    """The same rotation as time_in_turn, reduced to each function's median."""
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "ab"}
    medians = measure.median_ms_in_turn(fns, repeats=3, warmup=1)
    assert "".join(calls) == "ab" + "ab" + "ba" + "ab"
    assert list(medians) == ["a", "b"]
    assert all(isinstance(v, float) and v >= 0 for v in medians.values())


def test_time_ms_warms_up_then_times_each_run():
    calls = []

    def sleep() -> None:
        calls.append(None)
        time.sleep(0.002 * len(calls))  # each call longer than the one before

    timing = measure.time_ms(sleep, "cpu", repeats=3, warmup=2)
    assert len(calls) == 5 and timing.runs == 3
    samples = timing.samples_ms
    assert all(ms >= sleep_ms for ms, sleep_ms in zip(samples, (6, 8, 10), strict=True))  # 3 to 5
    assert timing.median_ms == sorted(samples)[1]
    assert (timing.min_ms, timing.max_ms) == (min(samples), max(samples))


def test_time_ms_stops_at_the_budget_but_times_at_least_once():
    timing = measure.time_ms(lambda: time.sleep(0.01), "cpu", repeats=50, warmup=0, budget_s=1e-3)
    assert timing.runs == 1
    assert measure.Timing((1.0, 5.0, 2.0, 4.0)).median_ms == 3.0


def _allocate_and_free() -> None:
    a = torch.empty(MIB // 4)  # 1 MiB of float32
    b = torch.empty(2 * MIB // 4)  # 2 MiB: 3 MiB live together
    del a, b
    torch.empty(MIB // 4)  # 1 MiB, after both were freed


@pytest.mark.parametrize("method", ["tracking", "profiler", "auto"])
def test_peak_memory_of_sees_the_largest_live_total(method):
    peak = measure.peak_memory_of(_allocate_and_free, "cpu", method)
    assert peak.peak_bytes == 3 * MIB
    assert peak.method == ("profiler" if method == "profiler" else "storage tracking")


def test_peak_memory_of_records_the_timeline():
    peak = measure.peak_memory_of(_allocate_and_free, "cpu", "tracking", record=True)
    assert [live for _, live in peak.timeline] == [MIB, 3 * MIB, MIB]
    assert all("empty" in op for op, _ in peak.timeline)


def test_peak_memory_of_profiler_keeps_stderr_clean(capfd):
    measure.peak_memory_of(_allocate_and_free, "cpu", "profiler")
    assert capfd.readouterr().err == ""


def test_load_check_busy_when_load_exceeds_the_cpus(monkeypatch):
    monkeypatch.setattr(measure.os, "getloadavg", lambda: (3.5, 1.0, 1.0))
    check = measure.check_load(0.5, cpus=4)
    assert (check.before, check.after, check.cpus, check.busy) == (0.5, 3.5, 4, False)
    assert "stayed within" in check.note()
    assert measure.check_load(4.5, cpus=4).busy  # busy before
    assert measure.check_load(0.0, cpus=2).busy  # busy after
    busy = measure.check_load(0.0, cpus=2).note()
    assert "before 0.0, after 3.5, on 2 logical CPUs" in busy and "busy" in busy
    assert measure.check_load(0.0).cpus == measure.os.cpu_count()
    assert measure.load_average() == 3.5


@pytest.mark.parametrize(
    "before, cpus, error",
    [(-1.0, 2, ValueError), ("1", 2, TypeError), (1.0, 0, ValueError), (1.0, 2.0, TypeError)],
)
def test_check_load_bad_input(before, cpus, error):
    with pytest.raises(error):
        measure.check_load(before, cpus=cpus)


def test_cpu_model_names_the_family_and_model(monkeypatch):
    import io

    two_processors = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
        "model name\t: AMD EPYC\n\nprocessor\t: 1\ncpu family\t: 99\nmodel\t\t: 1\n"
        "model name\t: other\n"
    )
    monkeypatch.setattr(measure, "open", lambda *a, **k: io.StringIO(two_processors), raising=False)
    assert measure.cpu_model() == "AMD EPYC (family 25, model 17)"

    def missing(*args, **kwargs):
        raise FileNotFoundError("/proc/cpuinfo")

    monkeypatch.setattr(measure, "open", missing, raising=False)
    assert measure.cpu_model()  # platform's answer, never empty
