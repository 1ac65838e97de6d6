"""Hook plugin: a config's ``data_batch_args`` checked against the patch source's ``getbatch``.

Registered as ``ekn_patch_batch_args`` in the ``ekn.plugins`` group. With ``data_class``
``BatchCreatorImage`` / ``patch_source``, every key of ``data_batch_args`` must be an argument of
:meth:`~ekn_plugins.data.patches.PatchSource.getbatch`: ELEKTRONN2's arguments that ekn does not
take are named with what to use instead, others with the closest argument, when the config is
validated (before a run directory exists), not as a ``TypeError`` at the first batch.

Example:
    >>> ekn_check_config({"data_class": "BatchCreatorImage", "data_batch_args": {"warp": 0.5, "ignore_thresh": 0.9}})
    ["data_batch_args: ELEKTRONN2's 'ignore_thresh' is not supported: ekn does not reject patches ..."]
    >>> ekn_check_config({"data_class": "patch_source", "data_batch_args": {"warp_arg": {}}})
    ["data_batch_args: getbatch takes no argument 'warp_arg' (did you mean 'warp_args'?); it takes batch_size, ..."]
"""

from __future__ import annotations

from typing import Any, Mapping

from ekn_core.hookspecs import hookimpl

#: ELEKTRONN2's ``getbatch`` arguments that ekn's patch source does not take, and what to do instead.
ELEKTRONN2_ONLY = {
    "ignore_thresh": "ekn does not reject patches by their share of unlabelled voxels; remove it (unlabelled voxels, "
                     "negative ids or the ignore value, are left out of the losses)",
    "ret_ll_mask": "ekn has no lazy-label masks; remove it and mark unlabelled voxels with negative ids (or the "
                   "ignore value -666 in float targets), which the losses leave out",
    "nga_blur_noise_probability": "add {'type': 'noise', 'distribution': 'uniform', 'probability': P} to "
                                  "data_init_kwargs['augmenters'] (ELEKTRONN2 kept only the noise of this option)",
    "blurry_blobs_probability": "use the 'blur' augmenter in data_init_kwargs['augmenters'] (ekn has no blurry blobs)",
    "blurry_blobs_args": "use the 'blur' augmenter in data_init_kwargs['augmenters'] (ekn has no blurry blobs)",
    "noisy_random_erasing_probability": "ekn has no random erasing; remove it (the closest augmenters are 'noise' "
                                        "and 'missing_section')",
    "noisy_random_erasing_args": "ekn has no random erasing; remove it",
    "uniform_random_erasing_probability": "ekn has no random erasing; remove it (the closest augmenter is "
                                          "'missing_section')",
    "uniform_random_erasing_args": "ekn has no random erasing; remove it",
    "nhood_targets": "ekn has no neighbourhood targets; for affinity targets set affinities='affinity' and nhood in "
                     "data_init_kwargs",
    "affinities": "move it to data_init_kwargs (ekn's patch source takes affinities and nhood when it is built)",
}

#: ``data_class`` names (compared without case and underscores) whose batches ``getbatch`` of
#: :class:`~ekn_plugins.data.patches.PatchSource` makes.
PATCH_SOURCES = {"batchcreatorimage", "patchsource"}


def batch_args_problems(args: Mapping[str, Any]) -> list[str]:
    """The problems of ``data_batch_args`` for the patch source: ELEKTRONN2's arguments it does not
    take (with what to use instead) and unknown ones (with the closest argument).

    Example:
        >>> batch_args_problems({"warp": True, "grey_augment_channels": [0]})
        []
    """
    from ekn_core.errors import keyword_names, unknown_keywords
    from ekn_plugins.data.patches import PatchSource

    problems = [f"data_batch_args: ELEKTRONN2's {key!r} is not supported: {ELEKTRONN2_ONLY[key]}"
                for key in args if key in ELEKTRONN2_ONLY]
    others = [key for key in args if key not in ELEKTRONN2_ONLY]
    names = [n for n in keyword_names(PatchSource.getbatch) if n != "self"]
    return problems + unknown_keywords(PatchSource.getbatch, others, "data_batch_args", names)


@hookimpl
def ekn_check_config(config: dict[str, Any]) -> list[str]:
    """The problems of ``data_batch_args`` when ``data_class`` is the patch source."""
    from ekn_core.trainer.data_source import normalised_name

    data_class, args = config.get("data_class"), config.get("data_batch_args")
    if not isinstance(data_class, str) or normalised_name(data_class) not in PATCH_SOURCES:
        return []
    return batch_args_problems(args) if isinstance(args, Mapping) else []
