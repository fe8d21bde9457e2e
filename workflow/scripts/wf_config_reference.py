"""Generate the per-section key reference of config/README.md from config/config.yaml's comments.

    python workflow/scripts/wf_config_reference.py                 # print the Markdown
    python workflow/scripts/wf_config_reference.py --update config/README.md

Each key's documentation is the comment block right above it plus its trailing comment; nested
keys are shown as dotted paths. The values are the defaults of config/config.yaml.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- BEGIN KEY REFERENCE -->", "<!-- END KEY REFERENCE -->"
KEY_RE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.]*):(?P<value>[^#]*?)\s*(?:#\s?(?P<comment>.*))?$")


def reference(config_text: str) -> str:
    out: list[str] = ["## Key reference (generated from config/config.yaml)"]
    pending: list[str] = []
    stack: list[tuple[int, str]] = []
    section = None
    in_block_list = False
    for raw in config_text.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped:
            pending = []
            continue
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            if not set(text) <= set("-") and not text.startswith("----"):
                pending.append(text)
            continue
        if stripped.startswith("- "):  # block list items belong to the key above
            in_block_list = True
            continue
        m = KEY_RE.match(line)
        if not m:
            continue
        indent = len(m.group("indent"))
        key = m.group("key")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if indent == 0:
            section = key
            out += ["", f"### {section}", "", "| key | default | meaning |", "|---|---|---|"]
        path = ".".join([k for _, k in stack] + [key])
        value = m.group("value").strip()
        doc = " ".join(pending + ([m.group("comment")] if m.group("comment") else []))
        doc = doc.replace("|", "\\|")
        if value or doc:
            shown = value if value else "(mapping)"
            out.append(f"| `{path}` | `{shown}` | {doc} |".replace("``", "`(mapping)`"))
        stack.append((indent, key))
        pending = []
        in_block_list = False
    del in_block_list
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    ap.add_argument("--update", help="README whose key-reference block is replaced")
    args = ap.parse_args(argv)
    md = reference(Path(args.config).read_text())
    if not args.update:
        sys.stdout.write(md)
        return 0
    path = Path(args.update)
    text = path.read_text()
    i, j = text.index(BEGIN) + len(BEGIN), text.index(END)
    path.write_text(text[:i] + "\n" + md + text[j:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
