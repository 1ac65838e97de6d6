"""Re-export of :mod:`ekn_core.atomic` for the trainer's modules."""

from ekn_core.atomic import atomic_write, write_bytes, write_text

__all__ = ["atomic_write", "write_text", "write_bytes"]
