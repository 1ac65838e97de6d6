"""Grey-value scaling of raw data, the same for training, prediction, validation and previews.

Integer raw is mapped to [0, 1] by its dtype's whole range (uint8 / 255, uint16 / 65535, int8 and
int16 from their minimum), bool to 0/1, and float data (float16, bfloat16, float32, ...) are used
as they are. A net therefore sees the same values whichever path reads its raw. Integer types wider
than 16 bits are refused: their range would squeeze any EM data to a constant 0.5.

Example:
    >>> import numpy as np
    >>> to_grey(np.array([0, 255], np.uint8)).tolist(), to_grey(np.array([-128, 127], np.int8)).tolist()
    ([0.0, 1.0], [0.0, 1.0])
    >>> to_grey(np.array([0.25], np.float16)).dtype
    dtype('float32')
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ekn_core.errors import ShapeError

#: Integer grey values that span less than this part of their dtype's range get a warning.
NARROW_GREY_SPAN = 1 / 8
#: Spatial shape (at most) of the centre box whose grey values :func:`check_grey` looks at.
GREY_SAMPLE = (16, 256, 256)

log = logging.getLogger("ekn.data")


def is_float_dtype(dtype: Any) -> bool:
    """Whether ``dtype`` holds floating-point numbers: numpy's floats and the ``ml_dtypes`` ones
    (bfloat16, float8 variants), which numpy sees as opaque (kind ``'V'``).

    Example:
        >>> import ml_dtypes
        >>> is_float_dtype("float16"), is_float_dtype(ml_dtypes.bfloat16), is_float_dtype("uint8")
        (True, True, False)
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "V":
        return dtype.kind == "f"
    try:
        import ml_dtypes

        ml_dtypes.finfo(dtype)
    except (ImportError, ValueError, TypeError):
        return False
    return True


def grey_range(dtype: Any) -> tuple[float, float]:
    """The grey values mapped to 0 and 1: an integer dtype's whole range (uint8 0..255, uint16
    0..65535, int8 -128..127, int16 -32768..32767), ``(0, 1)`` for bool and for float data.

    Example:
        >>> import ml_dtypes
        >>> grey_range("uint8"), grey_range("int16"), grey_range("float32"), grey_range(ml_dtypes.bfloat16)
        ((0.0, 255.0), (-32768.0, 32767.0), (0.0, 1.0), (0.0, 1.0))
        >>> grey_range("int64")
        Traceback (most recent call last):
        ...
        ekn_core.errors.ShapeError: raw data of dtype int64 cannot be scaled to grey values: ...
    """
    dtype = np.dtype(dtype)
    if is_float_dtype(dtype) or dtype == bool:
        return 0.0, 1.0
    if dtype.kind not in "iu" or dtype.itemsize > 2:
        raise ShapeError(f"raw data of dtype {dtype} cannot be scaled to grey values: ekn maps integer raw by its "
                         "dtype's range (uint8, uint16, int8, int16) and uses float raw as it is; cast the data to "
                         "uint8 or uint16, or to float32 in [0, 1] (e.g. np.asarray(raw, np.uint8) for 0..255 values)")
    info = np.iinfo(dtype)
    return float(info.min), float(info.max)


def to_grey(data: Any) -> np.ndarray:
    """``data`` as float32 grey values: :func:`grey_range` mapped to [0, 1], floats unchanged."""
    data = np.asarray(data)
    low, high = grey_range(data.dtype)
    grey = data.astype(np.float32, copy=False)
    if (low, high) == (0.0, 1.0):
        return grey
    return (grey if low == 0 else grey - np.float32(low)) / np.float32(high - low)


def grey_problem(scaled: np.ndarray, dtype: Any, name: str) -> str | None:
    """Why grey values (``to_grey`` of data of ``dtype``) do not fit their scaling, or None: integer
    values spanning less than :data:`NARROW_GREY_SPAN` of their dtype's range (12-bit data in
    uint16, int16 data in 0..4000), or float values outside [0, 1].

    Example:
        >>> print(grey_problem(to_grey(np.array([0, 4095], np.uint16)), "uint16", "em.h5"))
        em.h5: the uint16 grey values 0..4095 use 6.2 % of the range 0..65535 that is mapped to [0, 1], ...
    """
    lo, hi = float(np.min(scaled)), float(np.max(scaled))
    if is_float_dtype(dtype):
        if lo < 0 or hi > 1:
            return (f"{name}: float grey values reach {lo:.4g}..{hi:.4g}, outside [0, 1]: float raw data are used as "
                    "they are, but intensity augmenters (grey, histogram) clip to [0, 1]; store the volume scaled to "
                    "[0, 1]")
    elif hi - lo < NARROW_GREY_SPAN:
        low, high = grey_range(dtype)
        first, last = (round(low + v * (high - low)) for v in (lo, hi))
        return (f"{name}: the {np.dtype(dtype)} grey values {first}..{last} use {100 * (hi - lo):.1f} % of the range "
                f"{low:.0f}..{high:.0f} that is mapped to [0, 1], so the net sees {lo:.3g}..{hi:.3g}; store the "
                f"volume rescaled to the {np.dtype(dtype)} range (e.g. 12-bit data in uint16 times 16), as uint8, or as "
                "float32 in [0, 1] (used as it is)")
    return None


def check_grey(volume: Any, dtype: Any, name: str) -> str | None:
    """Logs a warning, and returns it, when the grey values of a raw ``volume`` (``(z, y, x)`` or
    ``(c, z, y, x)``, raw values of ``dtype`` or already :func:`to_grey` scaled) do not fit their
    scaling (:func:`grey_problem`). Looks at the centre box of half the volume's size per axis, at
    most :data:`GREY_SAMPLE`, channel by channel; the training data source and ``predict_volume``
    call it once per volume.

    Example:
        >>> twelve_bit = np.random.default_rng(0).integers(0, 4096, (8, 64, 64)).astype(np.uint16)
        >>> print(check_grey(twelve_bit, twelve_bit.dtype, "em.h5"))
        em.h5: the uint16 grey values 0..4095 use 6.2 % of the range 0..65535 that is mapped to [0, 1],
        so the net sees 0..0.0625; ...
    """
    shape = tuple(volume.shape)
    spatial = shape[-3:]
    size = [max(1, min(n // 2, s)) for n, s in zip(spatial, GREY_SAMPLE[-len(spatial):])]
    box = tuple(slice((n - s) // 2, (n - s) // 2 + s) for n, s in zip(spatial, size))
    values = to_grey(np.asarray(volume[(slice(None),) * (len(shape) - len(spatial)) + box])).reshape(-1, *size)
    for c, channel in enumerate(values):
        problem = grey_problem(channel, dtype, name + (f" channel {c}" if len(values) > 1 else ""))
        if problem:
            log.warning("%s", problem)
            return problem
    return None
