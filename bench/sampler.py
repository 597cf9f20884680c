"""A sampling profiler for a service under load: `python -m bench.sampler OUT -m module`.

Runs `module` as `python -m module` would, while a thread reads the main thread's stack
every millisecond (sys._current_frames). At exit, OUT gets the functions that were on CPU
most often (self: the innermost frame; total: anywhere on the stack). The thread needs the
GIL to take a sample, so a sample lands where the main thread let the GIL go: between
bytecodes (every switch interval), or in a blocking C call such as the event loop's wait
(reported as `<idle>` when that is epoll/select). Good for ranking, not for exact shares.
"""

from __future__ import annotations

import atexit
import collections
import os
import runpy
import sys
import threading
import time
from types import FrameType

INTERVAL = 0.001
_IDLE = {"select", "poll", "run_forever", "_run_once"}


def _label(frame: FrameType) -> str:
    code = frame.f_code
    path = code.co_filename
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = os.path.relpath(path)
    return f"{code.co_name} ({path}:{code.co_firstlineno})"


def main() -> None:
    out, flag, module, *rest = sys.argv[1:]
    assert flag == "-m", "usage: python -m bench.sampler OUT -m module [args]"
    main_id = threading.get_ident()
    self_counts: collections.Counter[str] = collections.Counter()
    total_counts: collections.Counter[str] = collections.Counter()
    samples = 0
    running = True

    def sample() -> None:
        nonlocal samples
        while running:
            time.sleep(INTERVAL)
            frame = sys._current_frames().get(main_id)
            if frame is None:
                continue
            samples += 1
            self_counts[_label(frame)] += 1
            seen = set()
            while frame is not None:
                label = _label(frame)
                if label not in seen:
                    seen.add(label)
                    total_counts[label] += 1
                frame = frame.f_back

    def report() -> None:
        nonlocal running
        running = False
        lines = [f"{samples} samples of the main thread ({module})", "", "top self:"]
        lines += [f"{n / samples:6.1%}  {name}" for name, n in self_counts.most_common(40)]
        lines += ["", "top total:"]
        lines += [f"{n / samples:6.1%}  {name}" for name, n in total_counts.most_common(60)]
        with open(out, "w") as f:
            f.write("\n".join(lines) + "\n")

    atexit.register(report)
    threading.Thread(target=sample, daemon=True, name="sampler").start()
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
