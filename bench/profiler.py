"""Profile a service under load: `python -m bench.profiler OUT -m module [args]`.

Runs `module` as `python -m module` would, under cProfile, and writes to OUT at exit the
functions by own time and by cumulative time, with call counts (divide by the executions
served for calls per execution). cProfile is deterministic: every Python call and C
builtin is counted, which inflates the share of small functions called often; the ranking
and the counts are what to read. For where the time goes at load, `python -m bench
--profile` samples the service with py-spy instead (`bench/sampling.py`).
"""

from __future__ import annotations

import atexit
import cProfile
import io
import pstats
import runpy
import sys


def main() -> None:
    out, flag, module, *rest = sys.argv[1:]
    assert flag == "-m", "usage: python -m bench.profiler OUT -m module [args]"
    profile = cProfile.Profile()

    def report() -> None:
        profile.disable()
        profile.dump_stats(out + ".prof")  # the raw figures, for pstats
        text = io.StringIO()
        stats = pstats.Stats(profile, stream=text)
        stats.sort_stats("tottime").print_stats(45)
        stats.sort_stats("cumulative").print_stats(70)
        with open(out, "w") as f:
            f.write(text.getvalue())

    atexit.register(report)
    sys.argv = [module, *rest]
    profile.enable()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
