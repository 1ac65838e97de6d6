"""Utilities: loop profiler, appendable KD-tree, volume viewer, experiment daemon, skeletons and tracing.

Each module has one job and imports only what it needs, so importing one of them stays cheap.
"""
