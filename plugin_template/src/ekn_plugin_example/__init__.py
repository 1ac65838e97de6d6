"""ekn-plugin-example: a complete third-party ekn plugin to copy from.

It registers, through entry points in ``pyproject.toml``:

- layer ``example.scale`` (:class:`~ekn_plugin_example.layers.Scale`),
- loss ``example.log_cosh`` (:class:`~ekn_plugin_example.losses.LogCoshLoss`),
- augmenter ``example.invert`` (:class:`~ekn_plugin_example.augmenters.Invert`),
- command ``ekn example-hello`` (:class:`~ekn_plugin_example.commands.HelloCommand`),
- training-shell command ``example_steps`` (:class:`~ekn_plugin_example.commands.StepsCommand`),
- hook implementations in :mod:`ekn_plugin_example.hooks`.
"""

__version__ = "0.1.0"
