"""Mixed precision on the CPU: the one place that knows which precisions the trainers accept.

"bf16" autocasts a training step's forward pass to bfloat16 (matrix products run in bf16 on
a CPU with AVX-512 BF16); weights, optimizer state and the loss stay float32.
"""

from __future__ import annotations

import torch

from imagetext.errors import InvalidInputError

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InvalidInputError(f"precision must be fp32 or bf16, not {precision!r}")
    return precision


def cpu_autocast(precision: str) -> torch.autocast:
    """A reusable context manager: bf16 autocast, or a disabled one for fp32."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=check_precision(precision) == "bf16")


def full_precision() -> torch.autocast:
    """Inside a bf16 autocast: back to float32 (for a loss computed from the autocast outputs)."""
    return torch.autocast("cpu", enabled=False)
