"""The PE registry: config/pe.yaml, name -> {class, kwargs, description, reference}.

``load_registry`` validates every entry against workflow/schemas/pe.schema.yaml, checks the class
path is under the allow-listed prefix ``stripes.pe.`` *before* importing anything, imports it,
checks it subclasses ``PositionalEncoding`` and that the kwargs bind to its constructor together
with the structural arguments the model supplies. Any failure raises ``RegistryError`` naming the
entry, so a wrong entry fails when the DAG is built rather than inside a training job.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import PositionalEncoding

ALLOWED_PREFIX = "stripes.pe."
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_REGISTRY = _ROOT / "config" / "pe.yaml"
SCHEMA = _ROOT / "workflow" / "schemas" / "pe.schema.yaml"
# what the model passes to every PE constructor; dummy values are enough to check binding
_STRUCTURAL_PROBE = {"n_heads": 4, "head_dim": 128, "context_dim": 1, "d_model": 512, "n_layers": 2}


def constructor_signature(cls: type) -> inspect.Signature:
    """The effective keyword signature of ``cls(...)``: PE constructors forward ``**structural``
    to their base, so the named parameters of every ``__init__`` up the MRO are merged until one
    without ``**kwargs``. A plain ``inspect.signature`` would accept any kwarg here."""
    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        sig = inspect.signature(vars(klass)["__init__"])
        var_kw = False
        for p in list(sig.parameters.values())[1:]:
            if p.kind is p.VAR_KEYWORD:
                var_kw = True
            elif p.kind is not p.VAR_POSITIONAL and p.name not in params:
                params[p.name] = p.replace(kind=p.KEYWORD_ONLY)
        if not var_kw:
            break
    return inspect.Signature(sorted(params.values(), key=lambda p: p.default is not p.empty))


class RegistryError(ValueError):
    """A PE registry entry (or the file) is invalid; the message names the entry."""


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    cls: type
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    reference: str = ""
    class_path: str = ""

    def build(self, **structural) -> PositionalEncoding:
        return self.cls(**structural, **self.kwargs)


def default_registry_path() -> Path:
    return Path(os.environ.get("STRIPES_PE_REGISTRY", DEFAULT_REGISTRY))


def _schema() -> dict:
    import yaml

    return yaml.safe_load(SCHEMA.read_text())


def _check_entry(name: str, raw: Any, entry_schema: dict | None) -> RegistryEntry:
    def fail(msg: str):
        raise RegistryError(f"PE registry entry {name!r}: {msg}")

    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        fail(f"invalid name; names must match {NAME_PATTERN.pattern} (lowercase snake_case)")
    if not isinstance(raw, dict):
        fail(f"must be a mapping with keys class, kwargs, description, reference, got {type(raw).__name__}")
    path = raw.get("class")
    if not isinstance(path, str) or not path:
        fail("missing 'class' (a dotted path under 'stripes.pe.')")
    # before any import: a config must not be able to import arbitrary code
    if not path.startswith(ALLOWED_PREFIX) or ".." in path:
        fail(f"class {path!r} is outside the allow-listed prefix {ALLOWED_PREFIX!r}")
    if entry_schema is not None:
        import jsonschema

        try:
            jsonschema.validate(raw, entry_schema)
        except jsonschema.ValidationError as err:
            where = "/".join(map(str, err.absolute_path)) or "<entry>"
            fail(f"schema violation at {where}: {err.message}")
    module_path, _, cls_name = path.rpartition(".")
    try:
        module = importlib.import_module(module_path)
    except ImportError as err:
        fail(f"cannot import module {module_path!r} ({err})")
    cls = getattr(module, cls_name, None)
    if cls is None:
        fail(f"module {module_path!r} has no class {cls_name!r}")
    if not (inspect.isclass(cls) and issubclass(cls, PositionalEncoding)):
        fail(f"{path!r} is not a subclass of stripes.pe.PositionalEncoding")
    kwargs = dict(raw.get("kwargs") or {})
    clash = sorted(set(kwargs) & set(_STRUCTURAL_PROBE))
    if clash:
        fail(f"kwargs {clash} are structural arguments supplied by the model, not by the registry")
    try:
        sig = constructor_signature(cls)
        sig.bind(**_STRUCTURAL_PROBE, **kwargs)
    except TypeError as err:
        fail(f"kwargs {sorted(kwargs)} do not bind to {cls.__name__}{sig}: {err}")
    return RegistryEntry(name, cls, kwargs, raw.get("description", ""), raw.get("reference", ""), path)


def load_registry(path: str | os.PathLike | None = None, data: dict | None = None) -> dict[str, RegistryEntry]:
    """Load and check the registry file (or an already-parsed ``data`` mapping)."""
    if data is None:
        import yaml

        path = Path(path) if path is not None else default_registry_path()
        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise RegistryError(f"cannot read PE registry {path}: {err}") from err
    if not isinstance(data, dict) or not data:
        raise RegistryError(f"PE registry {path or '<data>'} must be a non-empty mapping name -> entry")
    schema = _schema()
    entry_schema = schema.get("additionalProperties")
    return {name: _check_entry(name, raw, entry_schema) for name, raw in data.items()}


def get_entry(name: str, registry: dict[str, RegistryEntry] | None = None) -> RegistryEntry:
    registry = load_registry() if registry is None else registry
    try:
        return registry[name]
    except KeyError:
        raise RegistryError(f"unknown PE {name!r}; registered: {', '.join(sorted(registry))}") from None


def build_pe(name: str, *, n_heads: int, head_dim: int, context_dim: int, d_model: int | None = None,
             n_layers: int = 2, registry: dict[str, RegistryEntry] | None = None) -> PositionalEncoding:
    """Instantiate the registered PE ``name`` for the given sizes."""
    entry = get_entry(name, registry)
    d_model = n_heads * head_dim if d_model is None else d_model
    return entry.build(n_heads=n_heads, head_dim=head_dim, context_dim=context_dim, d_model=d_model,
                       n_layers=n_layers)
