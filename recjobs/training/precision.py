"""Mixed precision policy: which autocast dtype and whether a GradScaler, per device.

fp16 on CUDA: autocast + GradScaler (fp16 gradients underflow without loss scaling).
fp16 on CPU:  off, with one warning - CPU fp16 kernels are slow and scaling is CUDA-only.
bf16:         autocast without a scaler on CPU and CUDA (bf16 has fp32's exponent range). On a
              CPU without bf16 instructions (no AVX-512 BF16 or AMX on x86) torch emulates it
              and the loop runs several times slower than fp32: one warning says so.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precision:
    mode: str  # the resolved training.mixed_precision: off | fp16 | bf16
    device_type: str
    dtype: torch.dtype | None  # autocast dtype; None = full precision

    @property
    def use_scaler(self) -> bool:
        return self.dtype is torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def describe(self) -> str:
        """For the run's log: what this run computes in."""
        if self.dtype is None:
            return "off (fp32)"
        scaler = " with a GradScaler" if self.use_scaler else ""
        return f"{self.mode} (autocast to {str(self.dtype).removeprefix('torch.')}{scaler})"

    def grad_scaler(self) -> torch.amp.GradScaler:
        # A disabled scaler is a pass-through, so the loop has one code path.
        return torch.amp.GradScaler(self.device_type, enabled=self.use_scaler)


def precision_policy(mode: str, device: torch.device) -> Precision:
    """The runtime policy for a resolved `mixed_precision` value on `device`."""
    if mode == "off":
        return Precision(mode, device.type, None)
    if mode == "bf16":
        if device.type == "cpu" and cpu_has_native_bf16() is False:
            log.warning(
                "mixed_precision bf16 on a CPU without native bf16 (no AVX-512 BF16 or AMX): "
                "torch emulates it and training runs several times slower than fp32 here (up to "
                "10x); set "
                "mixed_precision: off for CPU training"
            )
        return Precision(mode, device.type, torch.bfloat16)
    if mode == "fp16":
        if device.type == "cuda":
            return Precision(mode, device.type, torch.float16)
        log.warning("mixed_precision fp16 needs CUDA; training in fp32 on %s", device.type)
        return Precision("off", device.type, None)
    raise ValueError(f"unknown mixed precision mode {mode!r}")


# CPU flags (x86 /proc/cpuinfo "flags", Arm "Features") that mean bf16 arithmetic in hardware.
NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """Whether this CPU computes bf16 natively; None where it cannot be told (not Linux)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    flags = re.findall(r"^(?:flags|Features)\s*:(.*)$", text, flags=re.MULTILINE)
    if not flags:
        return None
    return any(NATIVE_BF16_FLAGS & set(line.split()) for line in flags)
