"""A config's data_batch_args checked against the patch source's getbatch when the config is validated."""

import pytest

from ekn_core.errors import ConfigError
from ekn_plugins.data.batch_args import ELEKTRONN2_ONLY, ekn_check_config


@pytest.mark.parametrize("name", sorted(ELEKTRONN2_ONLY))
def test_elektronn2_batch_args_are_named_with_what_to_do(name):
    problems = ekn_check_config({"data_class": "BatchCreatorImage", "data_batch_args": {name: 1, "warp": 0.5}})
    assert problems == [f"data_batch_args: ELEKTRONN2's {name!r} is not supported: {ELEKTRONN2_ONLY[name]}"]


def test_unknown_batch_args_name_the_closest_and_only_for_patch_sources():
    config = {"data_class": "patch_source", "data_batch_args": {"force_dens": True, "grey_augment_channels": [0]}}
    assert ekn_check_config(config) == [
        "data_batch_args: getbatch takes no argument 'force_dens' (did you mean 'force_dense'?); it takes batch_size, "
        "source, rng, force_dense, warp, warp_args, grey_augment_channels, ignore_thresh, nhood_targets, ret_ll_mask, "
        "nga_blur_noise_probability, blurry_blobs_probability, blurry_blobs_args, noisy_random_erasing_probability, "
        "noisy_random_erasing_args, uniform_random_erasing_probability, uniform_random_erasing_args"]
    assert ekn_check_config({**config, "data_class": "MNISTData"}) == []
    assert ekn_check_config({**config, "data_class": ("my_data.py", "Mine")}) == []


def test_an_experiment_config_with_elektronn2_only_batch_args_is_refused(tmp_path):
    from ekn_core.trainer.config import ExperimentConfig

    path = tmp_path / "exp.py"
    path.write_text("data_class = 'BatchCreatorImage'\ndata_init_kwargs = {}\n"
                    "data_batch_args = {'warp': 0.5, 'affinities': 'malis'}\n"
                    "def create_model():\n    pass\n")
    with pytest.raises(ConfigError, match="ELEKTRONN2's 'affinities' is not supported: move it to data_init_kwargs"):
        ExperimentConfig.from_file(str(path))
