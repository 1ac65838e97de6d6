"""Augmenter plugins (``ekn.augmenters``): geometric warps, intensity changes and EM defects.

See :mod:`ekn_plugins.augmenters.base` for the protocol and ``docs/data.md`` for the list.
"""
