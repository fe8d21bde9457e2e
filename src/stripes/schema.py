"""The config schema: the one place where a config key, its type and its default are defined.

The schemas are package resources (``stripes/resources/config.schema.yaml`` for the study config,
``pe.schema.yaml`` for a PE registry entry), so an installed ``stripes`` needs no checkout.

* :func:`defaults` builds the defaults of a section (``"train"``, ``"model"``, ``"tune.pruner"``,
  ...) from the schema's ``default:`` values;
* :func:`with_defaults` merges a given section over them and rejects an unknown key, naming the
  key, the section and the known keys (what every module that reads a section calls);
* :func:`validate_schema` applies the JSON schema to a whole study config;
* :func:`dotted_key_problem` checks a dotted path such as ``train.lr`` (tuning space, overrides).

Adding a key: add it, with ``default:`` and ``description:``, to ``config.schema.yaml``, then
regenerate ``config/README.md`` (``python workflow/scripts/wf_config_reference.py --update
config/README.md``). The code reads it from the merged section; nothing else restates it.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Iterable

SCHEMA_FILES = {"config": "config.schema.yaml", "pe": "pe.schema.yaml"}


class ConfigError(ValueError):
    """A configuration problem; the message names every offending entry."""


class UnknownKeyError(ConfigError, KeyError):
    """A key the schema does not define. A KeyError too, for callers that catch a missing key."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def schema_file(name: str = "config") -> Traversable:
    """The packaged schema file (``config`` or ``pe``); a real path in an unzipped install."""
    return resources.files("stripes").joinpath("resources", SCHEMA_FILES[name])


@lru_cache(maxsize=None)
def _load(name: str) -> dict:
    from stripes.fileio import load_yaml

    return load_yaml(schema_file(name).read_text())


def load_schema(name: str = "config") -> dict:
    """A copy of the parsed schema (callers may modify it)."""
    return copy.deepcopy(_load(name))


def section_schema(section: str) -> dict:
    """The schema node of a section given as a dotted path (``"train"``, ``"tune.pruner"``)."""
    node = _load("config")
    for part in section.split("."):
        if part == "*" and isinstance(node.get("additionalProperties"), dict):  # an entry of a mapping
            node = node["additionalProperties"]
            continue
        props = node.get("properties") or {}
        if part not in props:
            raise UnknownKeyError(f"no config section {section!r} (at {part!r}; known: {', '.join(props)})")
        node = props[part]
    return node


def _defaults_of(node: dict) -> dict:
    out: dict[str, Any] = {}
    for key, sub in (node.get("properties") or {}).items():
        if "default" not in sub:
            continue  # no default: the key is absent unless given (e.g. tune.storage)
        if sub.get("type") == "object" and "properties" in sub and sub["default"] == {}:
            out[key] = _defaults_of(sub)
        else:
            out[key] = copy.deepcopy(sub["default"])
    return out


def known_keys(section: str) -> list[str]:
    return list(section_schema(section).get("properties") or {})


def defaults(section: str) -> dict:
    """The defaults of ``section`` from the schema's ``default:`` values (a fresh copy each call).
    A closed sub-object whose own default is ``{}`` gets its leaves' defaults (``tune.pruner``)."""
    return _defaults_of(section_schema(section))


def _merge(section: str, node: dict, given: dict, where: str) -> dict:
    known = node.get("properties") or {}
    unknown = [k for k in given if k not in known]
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise UnknownKeyError(f"unknown {where}: {names}; section {section!r} of the config schema has the keys: "
                              f"{', '.join(known)}")
    out = _defaults_of(node)
    for key, value in given.items():
        sub = known[key]
        if isinstance(value, dict) and "properties" in sub and sub.get("additionalProperties") is False:
            out[key] = _merge(f"{section}.{key}", sub, value, f"{section}.{key} keys")
        else:
            out[key] = copy.deepcopy(value)
    return out


def with_defaults(section: str, given: dict | None, where: str | None = None) -> dict:
    """``given`` merged over :func:`defaults` of ``section``; closed sub-objects merge key by key.

    Raises :class:`UnknownKeyError` (a ``ConfigError`` and a ``KeyError``) for a key the schema
    does not define; ``where`` names the keys in the message (default ``"<section> keys"``)."""
    return _merge(section, section_schema(section), dict(given or {}), where or f"{section} keys")


def dotted_key_problem(path: str, sections: Iterable[str]) -> str | None:
    """Why the dotted path ``path`` (``train.lr``) names no key of the schema, or None.

    ``sections``: the top-level sections the path may start with. A path may end inside a
    mapping the schema leaves open (``additionalProperties`` not false)."""
    sections = list(sections)
    parts = path.split(".")
    if len(parts) < 2 or parts[0] not in sections:
        return f"must be a dotted path into {'/'.join(sections)} (e.g. train.lr)"
    node = section_schema(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        props = node.get("properties")
        if props is None:
            return None if node.get("additionalProperties", True) is not False else f"{'.'.join(parts[:i])} has no keys"
        if part not in props:
            where = ".".join(parts[:i])
            return f"unknown key {part!r} of section {where!r} (known keys: {', '.join(props)})"
        node = props[part]
    return None


def fill_defaults(cfg: dict) -> dict:
    """Set, in place, every absent key that has a schema default, where its parent object is
    present (a section with ``default: {}`` is created first). The same rule as Snakemake's
    ``validate(config, schema)``, so a config loaded in Python sees what the workflow sees."""

    def walk(node: dict, instance: dict) -> None:
        for key, sub in (node.get("properties") or {}).items():
            if key not in instance and "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
            if isinstance(instance.get(key), dict):
                walk(sub, instance[key])

    walk(_load("config"), cfg)
    return cfg


def validate_schema(cfg: dict, schema_path: str | Path | None = None) -> None:
    """JSON-schema validation with a message naming the path of every error."""
    import jsonschema

    if schema_path is None:
        schema, label = _load("config"), "the config schema (stripes/resources/config.schema.yaml)"
    else:
        from stripes.fileio import load_yaml

        schema, label = load_yaml(Path(schema_path).read_text()), str(schema_path)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
        raise ConfigError(f"config does not match {label}:\n" + "\n".join(lines))


def closed_object_problems(name: str = "config") -> list[str]:
    """Objects of the schema left open by mistake: every object with ``properties`` must say
    ``additionalProperties: false`` (a misspelt key must fail, not be ignored)."""
    problems: list[str] = []

    def walk(node: Any, where: str) -> None:
        if not isinstance(node, dict):
            return
        if "properties" in node and node.get("additionalProperties") is not False:
            problems.append(where or "<root>")
        for key, sub in (node.get("properties") or {}).items():
            walk(sub, f"{where}.{key}" if where else key)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            walk(extra, f"{where}.*" if where else "*")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{where}[]")

    walk(_load(name), "")
    return problems
