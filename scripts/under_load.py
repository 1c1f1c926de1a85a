"""Run a command while busy-loop processes keep every core of the machine busy.

    python scripts/under_load.py make test        # what `make test-stress` does

The suite must stay green on a machine that is busy with other work; this makes the machine
busy on purpose. The burners run at the same priority as the tests, one per core, and stop when
the command ends, when this script is interrupted, or when this script dies (each burner watches
its parent), so none is ever left behind.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time


def _burn(parent: int) -> None:
    while os.getppid() == parent:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            pass


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    cores = os.cpu_count() or 2
    burners = [
        multiprocessing.Process(target=_burn, args=(os.getpid(),), daemon=True)
        for _ in range(cores)
    ]
    for burner in burners:
        burner.start()
    print(f"under_load: {cores} CPU burners running while: {' '.join(argv)}", flush=True)
    started = time.monotonic()
    try:
        code = subprocess.call(argv)
    except KeyboardInterrupt:
        code = 130
    finally:
        for burner in burners:
            burner.terminate()
        for burner in burners:
            burner.join(10)
    print(f"under_load: exit {code} after {time.monotonic() - started:.0f} s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
