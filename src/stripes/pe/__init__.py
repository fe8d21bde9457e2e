"""Positional encodings: one class per family, a common base class and the registry loader.

Build by name: ``build_pe("rope_c", n_heads=4, head_dim=128, context_dim=1)`` (config/pe.yaml).
"""

from .base import PositionalEncoding
from .registry import RegistryEntry, RegistryError, build_pe, get_entry, load_registry

# constructor args the model supplies itself (never written in a registry entry)
BUILDER_ARGS = PositionalEncoding.STRUCTURAL

__all__ = ["BUILDER_ARGS", "PositionalEncoding", "RegistryEntry", "RegistryError", "build_pe", "get_entry", "load_registry"]
