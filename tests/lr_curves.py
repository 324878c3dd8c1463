"""Closed forms of the LR curves the tests check schedulers against (torch's documented formulas)."""

from __future__ import annotations

import math

LR = 0.1


def cosine(n: float, period: float, lo: float, hi: float = LR) -> float:
    return lo + (hi - lo) * (1 + math.cos(math.pi * n / period)) / 2


def warm_restarts(n: int, t0: int, mult: int, lo: float) -> float:
    period, start = t0, 0
    while n >= start + period:
        start, period = start + period, period * mult
    return cosine(n - start, period, lo)


def step_lr(n: int, step_size: int, gamma: float) -> float:
    return LR * gamma ** (n // step_size)


def one_cycle(
    n: int, total: int, max_lr: float, pct: float = 0.3, div: float = 25.0, final_div: float = 1e4
) -> float:
    initial, low = max_lr / div, max_lr / div / final_div
    peak = pct * total - 1
    if n <= peak:
        return initial + (max_lr - initial) * (1 - math.cos(math.pi * n / peak)) / 2
    frac = (n - peak) / (total - 1 - peak)
    return low + (max_lr - low) * (1 + math.cos(math.pi * frac)) / 2
