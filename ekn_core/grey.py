"""Grey-value scaling of raw data, the same for training, prediction, validation and previews.

Integer raw is mapped to [0, 1] by its dtype's whole range (uint8 / 255, uint16 / 65535, int8 and
int16 from their minimum), bool to 0/1, and float data (float16, bfloat16, float32, ...) are used
as they are. A net therefore sees the same values whichever path reads its raw. Integer types wider
than 16 bits are refused: their range would squeeze any EM data to a constant 0.5. Prediction may
state the range instead (``grey_range``, ``ekn predict --grey-range``) for data whose dtype misleads,
e.g. 12-bit data in uint16 or a uint16 copy of 8-bit data, and so may training (``PatchSource(grey_range=...)``);
model files record the scaling their net was trained with (:mod:`ekn_core.training_data`).

Example:
    >>> import numpy as np
    >>> to_grey(np.array([0, 255], np.uint8)).tolist(), to_grey(np.array([-128, 127], np.int8)).tolist()
    ([0.0, 1.0], [0.0, 1.0])
    >>> to_grey(np.array([0.25], np.float16)).dtype
    dtype('float32')
    >>> to_grey(np.array([0, 255, 4095], np.uint16), grey_range=(0, 4095)).round(4).tolist()
    [0.0, 0.0623, 1.0]
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError, ShapeError

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


def scaling_range(dtype: Any, given: Any = None) -> tuple[float, float]:
    """The values of data of ``dtype`` that are mapped to 0 and 1: ``given`` (a stated range, checked),
    else :func:`grey_range` of the dtype.

    Example:
        >>> scaling_range("uint16"), scaling_range("uint16", [0, 4095])
        ((0.0, 65535.0), (0.0, 4095.0))
        >>> scaling_range("uint16", (4095, 0))
        Traceback (most recent call last):
        ...
        ekn_core.errors.ConfigError: grey range (4095, 0): give two numbers LOW < HIGH, ...
    """
    if given is None:
        return grey_range(dtype)
    try:
        low, high = (float(v) for v in given)
        ok = np.isfinite(low) and np.isfinite(high) and low < high
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"grey range {given!r}: give two numbers LOW < HIGH, the raw values mapped to 0 and 1 "
                          "(e.g. --grey-range 0 4095, grey_range=(0, 4095) for 12-bit data)")
    return low, high


def to_grey(data: Any, grey_range: Any = None) -> np.ndarray:
    """``data`` as float32 grey values: :func:`grey_range` mapped to [0, 1], floats unchanged; with
    ``grey_range`` ``(low, high)`` those values mapped to 0 and 1 (any dtype, see :func:`scaling_range`)."""
    data = np.asarray(data)
    low, high = scaling_range(data.dtype, grey_range)
    grey = data.astype(np.float32, copy=False)
    if (low, high) == (0.0, 1.0):
        return grey
    return (grey if low == 0 else grey - np.float32(low)) / np.float32(high - low)


def grey_problem(scaled: np.ndarray, dtype: Any, name: str, grey_range: Any = None) -> str | None:
    """Why grey values (``to_grey`` of data of ``dtype``) do not fit their scaling, or None: integer
    values spanning less than :data:`NARROW_GREY_SPAN` of their dtype's range (12-bit data in
    uint16, int16 data in 0..4000), or float values outside [0, 1]; with a stated ``grey_range``,
    values outside it.

    Example:
        >>> print(grey_problem(to_grey(np.array([0, 4095], np.uint16)), "uint16", "em.h5"))
        em.h5: the uint16 grey values 0..4095 use 6.2 % of the range 0..65535 that is mapped to [0, 1], ...
        >>> print(grey_problem(to_grey(np.array([0, 300], np.uint16), (0, 255)), "uint16", "em.h5", (0, 255)))
        em.h5: grey values 0..300 reach beyond the grey range 0..255 given for them, ...
    """
    lo, hi = float(np.min(scaled)), float(np.max(scaled))
    if grey_range is not None:
        low, high = scaling_range(dtype, grey_range)
        if lo < 0 or hi > 1:
            first, last = (low + v * (high - low) for v in (lo, hi))
            return (f"{name}: grey values {first:.6g}..{last:.6g} reach beyond the grey range {low:g}..{high:g} given "
                    f"for them, so the net sees {lo:.3g}..{hi:.3g} instead of values in [0, 1]; give the range the "
                    "data were recorded in (e.g. --grey-range 0 4095 for 12-bit data)")
    elif is_float_dtype(dtype):
        if lo < 0 or hi > 1:
            return (f"{name}: float grey values reach {lo:.4g}..{hi:.4g}, outside [0, 1]: float raw data are used as "
                    "they are, but intensity augmenters (grey, histogram) clip to [0, 1]; store the volume scaled to "
                    "[0, 1]")
    elif hi - lo < NARROW_GREY_SPAN:
        low, high = scaling_range(dtype)
        first, last = (round(low + v * (high - low)) for v in (lo, hi))
        return (f"{name}: the {np.dtype(dtype)} grey values {first}..{last} use {100 * (hi - lo):.1f} % of the range "
                f"{low:.0f}..{high:.0f} that is mapped to [0, 1], so the net sees {lo:.3g}..{hi:.3g}; store the "
                f"volume rescaled to the {np.dtype(dtype)} range (e.g. 12-bit data in uint16 times 16), as uint8, or as "
                "float32 in [0, 1] (used as it is); a prediction may state the range instead (ekn predict "
                "--grey-range 0 4095 for 12-bit data), if the net was trained on data mapped the same way")
    return None


def sample_box(volume: Any) -> np.ndarray:
    """The values :func:`check_grey` looks at: every channel of the centre box of half the volume's
    size per spatial axis (the last three axes, or fewer), at most :data:`GREY_SAMPLE`.

    Example:
        >>> sample_box(np.zeros((2, 8, 64, 1024))).shape  # (c, z, y, x)
        (2, 4, 32, 256)
    """
    shape = tuple(volume.shape)
    spatial = shape[-3:]
    size = [max(1, min(n // 2, s)) for n, s in zip(spatial, GREY_SAMPLE[-len(spatial):])]
    box = tuple(slice((n - s) // 2, (n - s) // 2 + s) for n, s in zip(spatial, size))
    return np.asarray(volume[(slice(None),) * (len(shape) - len(spatial)) + box])


def check_grey(volume: Any, dtype: Any, name: str, grey_range: Any = None, scaled: bool = False) -> str | None:
    """Logs a warning, and returns it, when the grey values of a raw ``volume`` (``(z, y, x)`` or
    ``(c, z, y, x)``: raw values of ``dtype``, or with ``scaled`` values :func:`to_grey` scaled with
    ``grey_range`` already) do not fit their scaling (:func:`grey_problem`; ``grey_range``: the
    range stated for the raw values). Looks at the
    centre box (:func:`sample_box`), channel by channel;
    the training data source and ``predict_volume`` call it once per volume.

    Example:
        >>> twelve_bit = np.random.default_rng(0).integers(0, 4096, (8, 64, 64)).astype(np.uint16)
        >>> print(check_grey(twelve_bit, twelve_bit.dtype, "em.h5"))
        em.h5: the uint16 grey values 0..4095 use 6.2 % of the range 0..65535 that is mapped to [0, 1],
        so the net sees 0..0.0625; ...
        >>> check_grey(twelve_bit, twelve_bit.dtype, "em.h5", (0, 4095)) is None
        True
    """
    values = sample_box(volume)
    size = values.shape[-min(3, values.ndim):]
    values = values.astype(np.float32, copy=False) if scaled else to_grey(values, grey_range)
    values = values.reshape(-1, *size)
    for c, channel in enumerate(values):
        problem = grey_problem(channel, dtype, name + (f" channel {c}" if len(values) > 1 else ""), grey_range)
        if problem:
            log.warning("%s", problem)
            return problem
    return None
