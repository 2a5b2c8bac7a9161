"""Benchmark the criss-cross attention implementations side by side.

A thin wrapper: the benchmark lives in :mod:`ccnet_edu.ops.benchmark` so the
book can import it. ``python benchmarks/bench_cca.py [--quick] [--csv FILE]``
is ``python -m ccnet_edu.ops bench ...``.
"""

from __future__ import annotations

import sys

from ccnet_edu.ops.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
