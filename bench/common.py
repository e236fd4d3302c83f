"""Machine description printed at the top of every benchmark."""

import os
import platform


def machine() -> str:
    """CPU model, core count and torch threads, so figures are read with their context."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    return f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, {platform.python_version()}"
