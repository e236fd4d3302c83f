"""Run `vprkit` (cli.main) in this process, dying by SIGKILL at a chosen point: used by tests/test_faults.py.

usage: python tests/fault_driver.py TARGET N ARGS...   TARGET is one of
  create_dataset  -- die inside the N-th h5py create_dataset call (an HDF5 feature file mid-write)
  write_index     -- die inside the N-th faiss.write_index call (the new index folder half-built)
  swap            -- die right after the N-th os.replace that moves an existing folder aside (mid-swap)
  pause           -- after the N-th feature batch is written, touch ARGS[-1]'s sibling `.paused` and sleep,
                     so the test can try a concurrent run and then kill -9 this one from outside
"""

import os
import signal
import sys
import time
from pathlib import Path


def _die(*_, **__):
    os.kill(os.getpid(), signal.SIGKILL)


def _after(n: int, real, action):
    """`real`, except that the n-th call runs `action(args)` (after `real` for actions that need it done)."""
    calls = {"n": 0}

    def wrapper(*args, **kw):
        calls["n"] += 1
        if calls["n"] == n and action is _die:
            _die()
        out = real(*args, **kw)
        if calls["n"] == n:
            action(*args)
        return out

    return wrapper


def main() -> int:
    target, n, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    import faiss
    import h5py

    from vprkit import cli
    from vprkit.features import h5io

    out = Path(argv[argv.index("-o") + 1])
    if target == "create_dataset":
        h5py.Group.create_dataset = _after(n, h5py.Group.create_dataset, _die)
    elif target == "write_index":
        faiss.write_index = _after(n, faiss.write_index, _die)
    elif target == "swap":
        real = os.replace
        moved = {"n": 0}

        def replace(src, dst):
            real(src, dst)
            if Path(src) == out:
                moved["n"] += 1
                if moved["n"] == n:
                    _die()

        os.replace = replace
    elif target == "pause":
        def pause(*_):
            out.with_name(".paused").touch()
            time.sleep(120)

        h5io.write_batch = _after(n, h5io.write_batch, pause)
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
