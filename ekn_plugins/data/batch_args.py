"""Hook plugin: a config's ``data_batch_args`` checked against the patch source's ``getbatch``.

Registered as ``ekn_patch_batch_args`` in the ``ekn.plugins`` group. With ``data_class``
``BatchCreatorImage`` / ``patch_source``, every key of ``data_batch_args`` must be an argument of
:meth:`~ekn_plugins.data.patches.PatchSource.getbatch`: ELEKTRONN2's arguments that ekn does not
take are named with what to use instead, others with the closest argument, when the config is
validated (before a run directory exists), not as a ``TypeError`` at the first batch.

Example:
    >>> ekn_check_config({"data_class": "BatchCreatorImage", "data_batch_args": {"warp": 0.5, "affinities": "malis"}})
    ["data_batch_args: ELEKTRONN2's 'affinities' is not supported: move it to data_init_kwargs ..."]
    >>> ekn_check_config({"data_class": "patch_source", "data_batch_args": {"warp_arg": {}}})
    ["data_batch_args: getbatch takes no argument 'warp_arg' (did you mean 'warp_args'?); it takes batch_size, ..."]
"""

from __future__ import annotations

from typing import Any, Mapping

from ekn_core.hookspecs import hookimpl

#: ELEKTRONN2's ``getbatch`` arguments that ekn's patch source does not take, and what to do instead.
ELEKTRONN2_ONLY = {
    "affinities": "move it to data_init_kwargs (ekn's patch source takes affinities and nhood when it is built)",
}

#: ``data_class`` names (compared without case and underscores) whose batches ``getbatch`` of
#: :class:`~ekn_plugins.data.patches.PatchSource` makes.
PATCH_SOURCES = {"batchcreatorimage", "patchsource"}


def batch_args_problems(args: Mapping[str, Any], augmenters: Any = None) -> list[str]:
    """The problems of ``data_batch_args`` for the patch source: ELEKTRONN2's arguments it does not
    take (with what to use instead), unknown ones (with the closest argument), else values it
    refuses: the error of the augmentation its ELEKTRONN2 arguments make
    (:func:`~ekn_plugins.data.patches.elektronn2_pipeline`: ``warp_args``, ``blurry_blobs_args``,
    ...), such arguments beside a configured pipeline ``augmenters`` (``data_init_kwargs``;
    :func:`~ekn_plugins.data.patches.augmentation_conflict`), and the values of ``ignore_thresh``,
    ``nhood_targets`` and ``ret_ll_mask``.

    Example:
        >>> batch_args_problems({"warp": True, "grey_augment_channels": [0]})
        []
        >>> batch_args_problems({"blurry_blobs_probability": 0.5, "blurry_blobs_args": {"diffusenes": 2}})
        ["data_batch_args: blurry_blobs_args ['diffusenes'] are not supported; known: ['blob_size_range', ...]"]
        >>> for problem in batch_args_problems({"ignore_thresh": 50, "ret_ll_mask": "yes"}):
        ...     print(problem)
        data_batch_args: ignore_thresh must be a share in [0, 1] ... got 50
        data_batch_args: ret_ll_mask must be True or False (return the lazy-label flags), got 'yes'
    """
    from ekn_core.errors import EknError, keyword_names, unknown_keywords
    from ekn_plugins.data.patches import (ELEKTRONN2_AUGMENTATION_ARGS, PatchSource, augmentation_conflict,
                                          batch_values_problems, elektronn2_pipeline)

    problems = [f"data_batch_args: ELEKTRONN2's {key!r} is not supported: {ELEKTRONN2_ONLY[key]}"
                for key in args if key in ELEKTRONN2_ONLY]
    others = [key for key in args if key not in ELEKTRONN2_ONLY]
    names = [n for n in keyword_names(PatchSource.getbatch) if n != "self"]
    problems += unknown_keywords(PatchSource.getbatch, others, "data_batch_args", names)
    if problems:
        return problems
    augmentation = {key: value for key, value in args.items() if key in ELEKTRONN2_AUGMENTATION_ARGS}
    try:
        elektronn2_pipeline(**augmentation)
    except (EknError, TypeError, ValueError) as err:
        problems.append(f"data_batch_args: {err}")
    else:
        conflict = augmentation_conflict(augmentation) if augmenters else None
        problems += [conflict] if conflict else []
    return problems + [f"data_batch_args: {problem}" for problem in batch_values_problems(args)]


@hookimpl
def ekn_check_config(config: dict[str, Any]) -> list[str]:
    """The problems of ``data_batch_args`` when ``data_class`` is the patch source."""
    from ekn_core.trainer.data_source import normalised_name

    data_class, args = config.get("data_class"), config.get("data_batch_args")
    if not isinstance(data_class, str) or normalised_name(data_class) not in PATCH_SOURCES:
        return []
    init = config.get("data_init_kwargs")
    augmenters = init.get("augmenters") if isinstance(init, Mapping) else None
    return batch_args_problems(args, augmenters) if isinstance(args, Mapping) else []
