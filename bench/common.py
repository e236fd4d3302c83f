"""Machine description printed at the top of every benchmark."""

import os
import platform


def machine() -> str:
    """CPU model, core count and torch threads, so figures are read with their context."""
    import torch

    from vprkit.models.precision import cpu_model

    threads = torch.get_num_threads()
    return f"{cpu_model()}, {os.cpu_count()} cores, torch threads {threads}, {platform.python_version()}"
