"""The PE registry: name -> {class, kwargs, description, reference}.

The package ships the papers' PEs (``stripes/resources/pe.yaml``, :data:`DEFAULT_REGISTRY`); a
study adds or replaces entries with its own file (config key ``pe_registry``, or
``$STRIPES_PE_REGISTRY`` for :func:`load_registry` without arguments), merged over the packaged
ones by :func:`merged_entries`: a new name adds a PE, an existing name replaces that entry.

``load_registry`` validates every entry against the packaged ``pe.schema.yaml``, checks the class
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
from importlib import resources
from pathlib import Path
from typing import Any

from .base import PositionalEncoding

ALLOWED_PREFIX = "stripes.pe."
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
#: the packaged registry (a Traversable: ``read_text()``; a real path in an unzipped install)
DEFAULT_REGISTRY = resources.files("stripes").joinpath("resources", "pe.yaml")
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


def read_entries(path) -> dict:
    """The raw entries of one registry file (an empty file has none). A top-level ``pes:``
    wrapper is accepted as well as a flat mapping."""
    import yaml

    from stripes.fileio import load_yaml

    try:
        data = load_yaml(path.read_text() if hasattr(path, "read_text") else Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise RegistryError(f"cannot read PE registry {path}: {err}") from err
    data = {} if data is None else data
    if isinstance(data, dict) and set(data) == {"pes"} and isinstance(data["pes"], dict):
        data = data["pes"]
    if not isinstance(data, dict):
        raise RegistryError(f"PE registry {path} must be a mapping name -> entry, got {type(data).__name__}")
    return data


def merged_entries(*extra) -> dict:
    """The packaged entries, then each file of ``extra`` (paths; None skipped) merged over them:
    a new name adds an entry, an existing name replaces it whole."""
    out = dict(read_entries(DEFAULT_REGISTRY))
    for path in extra:
        if path is not None:
            out.update(read_entries(path))
    return out


def _schema() -> dict:
    from stripes.schema import load_schema

    return load_schema("pe")


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
    """Load and check a registry: ``data`` (parsed entries), else the file ``path`` alone, else
    the packaged registry with ``$STRIPES_PE_REGISTRY`` (a file of entries) merged over it."""
    if data is None:
        if path is None:
            data = merged_entries(os.environ.get("STRIPES_PE_REGISTRY") or None)
            path = "stripes/resources/pe.yaml" + (" + $STRIPES_PE_REGISTRY" if os.environ.get("STRIPES_PE_REGISTRY") else "")
        else:
            data = read_entries(path)
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
