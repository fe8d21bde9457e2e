"""Generate the per-section key reference of config/README.md from the config schema.

    python workflow/scripts/wf_config_reference.py                 # print the Markdown
    python workflow/scripts/wf_config_reference.py --update config/README.md
    python workflow/scripts/wf_config_reference.py --check config/README.md   # exit 1 if stale

The schema the stripes package ships (src/stripes/resources/config.schema.yaml) is the one place
where a key, its default and its meaning are written; this table is derived from it (its
``default:`` and ``description:`` values), and tests/test_config.py fails when it is stale.
Nested keys are shown as dotted paths; ``<name>`` stands for a key the user chooses (a table
name, a seed set, a tuned parameter).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- BEGIN KEY REFERENCE -->", "<!-- END KEY REFERENCE -->"
TITLE = "## Key reference (generated from src/stripes/resources/config.schema.yaml)"


def _load_schema() -> dict:
    # the schema of this tree, also when another stripes is installed
    sys.path.insert(0, str(ROOT / "src"))
    try:
        from stripes.schema import load_schema
    finally:
        sys.path.pop(0)
    return load_schema("config")


def show(value) -> str:
    """A default in YAML flow style, as a user would write it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _kind(node: dict) -> str:
    if "enum" in node:
        return " \\| ".join(show(v) for v in node["enum"])
    kind = node.get("type", "")
    return "/".join(kind) if isinstance(kind, list) else str(kind)


def _rows(node: dict, path: str, out: list[str]) -> None:
    props = node.get("properties") or {}
    for key, sub in props.items():
        _row(sub, f"{path}.{key}" if path else key, out)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and (extra.get("properties") or extra.get("additionalProperties")):
        _rows(extra, f"{path}.<name>", out)


def _row(node: dict, path: str, out: list[str]) -> None:
    default = f"`{show(node['default'])}`" if "default" in node else "—"
    if node.get("type") == "object" and "properties" in node and node.get("default") == {}:
        default = "(mapping)"
    doc = " ".join(str(node.get("description", "")).split()).replace("|", "\\|")
    out.append(f"| `{path}` | {default} | {_kind(node)} | {doc} |")
    _rows(node, path, out)


def reference(schema: dict | None = None) -> str:
    schema = schema if schema is not None else _load_schema()
    out = [TITLE, "", "Every key, its default (— : no default; the key is absent unless given) and its meaning."]
    for section, node in (schema.get("properties") or {}).items():
        out += ["", f"### {section}", "", "| key | default | values | meaning |", "|---|---|---|---|"]
        _row(node, section, out)
    return "\n".join(out) + "\n"


def replace_block(text: str, md: str) -> str:
    i, j = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:i] + "\n" + md + text[j:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--update", help="README whose key-reference block is replaced")
    group.add_argument("--check", help="README whose key-reference block must match (exit 1 if not)")
    args = ap.parse_args(argv)
    md = reference()
    if args.check:
        text = Path(args.check).read_text()
        if replace_block(text, md) != text:
            print(f"{args.check}: the key reference is stale; run {Path(__file__).name} --update {args.check}",
                  file=sys.stderr)
            return 1
        return 0
    if not args.update:
        sys.stdout.write(md)
        return 0
    path = Path(args.update)
    path.write_text(replace_block(path.read_text(), md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
