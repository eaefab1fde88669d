"""Small helpers shared by the building blocks."""

from __future__ import annotations


def make_divisible(value: float, divisor: int = 4, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without losing more than 10%.

    This is the channel-rounding rule of MobileNet/GhostNet (``_make_divisible`` in the
    official code); GhostNet uses ``divisor=4``.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded
