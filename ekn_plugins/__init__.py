"""Built-in plugins of ekn, registered through the same entry points a third party uses.

Nothing here is imported by ``ekn_core`` directly: everything is reached through the registries.
"""
