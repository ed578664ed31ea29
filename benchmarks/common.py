"""What the benchmark scripts share (run as `python benchmarks/NAME.py`, so this folder is on sys.path)."""
import statistics
import time

from etc_nb.io import atomic_write


def median_time(fn, runs: int) -> float:
    "Median wall time in seconds of `runs` calls of `fn()` after one warm-up call."
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def emit(table: str, out=None) -> None:
    "Print the Markdown `table` and, with `out`, write it there atomically."
    print(table.rstrip("\n"))
    if out:
        atomic_write(out, table if table.endswith("\n") else table + "\n")
