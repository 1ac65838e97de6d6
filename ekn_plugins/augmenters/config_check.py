"""Hook plugin: the augmenters of a config checked before a run directory is made.

Registered as ``ekn_augmenter_config`` in the ``ekn.plugins`` group. ``data_init_kwargs['augmenters']``
(:class:`~ekn_plugins.augmenters.base.Pipeline`, the patch source's augmentation) is built once
when the config is validated, so a misspelt augmenter ``type`` or option is one config error at
``ekn train`` time, not a failure after the run directory and the model exist.

Example:
    >>> ekn_check_config({"data_init_kwargs": {"d_path": "data/"}}), ekn_check_config({})
    ([], [])
    >>> ekn_check_config({"data_init_kwargs": {"augmenters": [{"type": "wrap"}]}})  # doctest: +ELLIPSIS
    ["data_init_kwargs augmenters: ...'wrap'...Did you mean 'warp'?..."]
    >>> ekn_check_config({"data_init_kwargs": {"augmenters": [{"type": "grey", "chanels": [0]}]}})
    ["data_init_kwargs augmenters: augmenter 'grey' has no option(s) ['chanels']; it accepts ['brightness', 'channels', 'contrast', 'gamma', 'probability']"]
"""

from __future__ import annotations

from typing import Any

from ekn_core.errors import EknError
from ekn_core.hookspecs import hookimpl


@hookimpl
def ekn_check_config(config: dict[str, Any]) -> list[str]:
    """The problem of ``data_init_kwargs['augmenters']``, if any."""
    kwargs = config.get("data_init_kwargs")
    if not isinstance(kwargs, dict) or kwargs.get("augmenters") is None:
        return []
    from ekn_plugins.augmenters.base import Pipeline

    try:
        Pipeline.from_config(kwargs["augmenters"])
    except (EknError, TypeError, ValueError) as err:
        return [f"data_init_kwargs augmenters: {err}"]
    return []
