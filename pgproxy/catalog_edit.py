"""Add tags to a catalog file by editing its lines, so its comments, order and layout survive.

    text = add_tags(text, "app", {("public", "support_tickets", "body"): {"pii", "pii.email"}})

A column already in the file gets the tags it lacks (its flow list or scalar is
rewritten, a block list gains items); a missing column, table, schema or database
is inserted after the last entry of its parent, indented like its siblings. Tags
are only ever added. Flow-style mappings (``{email: pii}``) are not edited: the
error says where, and the file is left alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Set

import yaml

_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_YAML_WORDS = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})


class CatalogEditError(Exception):
    """The file cannot be edited safely by line (a flow-style mapping, an unusual layout)."""


def add_tags(text: str, database: str, additions: Mapping[tuple[str, str, str], Set[str]]) -> str:
    """`text` with `additions` ((schema, table, column) -> tags) merged into `database`'s entries."""
    if not additions:
        return text
    if text and not text.endswith("\n"):
        text += "\n"
    root = yaml.compose(text, Loader=yaml.SafeLoader) if text.strip() else None
    tree: dict[str, dict[str, dict[str, Set[str]]]] = {}
    for (schema, table, column), tags in additions.items():
        tree.setdefault(schema, {}).setdefault(table, {})[column] = tags
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement) as character offsets
    if root is None:
        edits.append((len(text), len(text), _block({database: tree}, 0, 2)))
    else:
        step = _indent_step(root)
        _merge(text, root, {database: tree}, step, edits)
    # From the end backwards; of two insertions at one place, the earlier one (a deeper entry)
    # must end up first, so it is made last.
    ordered = sorted(enumerate(edits), key=lambda item: (item[1][0], item[0]), reverse=True)
    for _, (start, end, replacement) in ordered:
        text = text[:start] + replacement + text[end:]
    return text


def _merge(text: str, node: yaml.Node, wanted: Mapping[str, object], step: int,
           edits: list[tuple[int, int, str]]) -> None:
    if not isinstance(node, yaml.MappingNode):
        raise CatalogEditError(f"line {node.start_mark.line + 1}: expected a mapping")
    if node.flow_style:
        raise CatalogEditError(f"line {node.start_mark.line + 1}: cannot add to a flow-style mapping "
                               "({...}); write it in block style")
    entries = {key.value: (key, value) for key, value in node.value if isinstance(key, yaml.ScalarNode)}
    indent = node.value[0][0].start_mark.column if node.value else 0
    missing: dict[str, object] = {}
    for name, child in wanted.items():
        if name not in entries:
            missing[name] = child
            continue
        _, value = entries[name]
        if isinstance(child, Mapping):
            _merge(text, value, child, step, edits)
        else:
            assert isinstance(child, Set)
            _add_to_tags(text, value, child, edits)
    if missing:
        at = _after_line(text, _last_line(node))
        edits.append((at, at, _block(missing, indent, step)))


def _add_to_tags(text: str, node: yaml.Node, tags: Set[str], edits: list[tuple[int, int, str]]) -> None:
    if isinstance(node, yaml.SequenceNode) and not node.flow_style:
        present = {item.value for item in node.value if isinstance(item, yaml.ScalarNode)}
        new = sorted(set(tags) - present)
        if not new:
            return
        first = node.value[0]
        line_start = text.rfind("\n", 0, first.start_mark.index) + 1
        dash = text.rfind("-", line_start, first.start_mark.index)
        prefix = " " * (dash - line_start) + "- "
        at = _after_line(text, _last_line(node))
        edits.append((at, at, "".join(f"{prefix}{tag}\n" for tag in new)))
        return
    have: list[str]
    if isinstance(node, yaml.SequenceNode):
        have = [item.value for item in node.value if isinstance(item, yaml.ScalarNode)]
    elif isinstance(node, yaml.ScalarNode):
        have = [node.value]
    else:
        raise CatalogEditError(f"line {node.start_mark.line + 1}: expected a tag or a list of tags")
    if set(tags) <= set(have):
        return
    if node.start_mark.line != node.end_mark.line:
        raise CatalogEditError(f"line {node.start_mark.line + 1}: a list of tags over several lines in "
                               "flow style; write it on one line or as a block list")
    kept = have + sorted(set(tags) - set(have))  # the file's order first
    edits.append((node.start_mark.index, node.end_mark.index, "[" + ", ".join(kept) + "]"))


def _last_line(node: yaml.Node) -> int:
    """The 0-based line where the node's text ends (block collections end where their last child does)."""
    while isinstance(node, yaml.MappingNode | yaml.SequenceNode) and not node.flow_style and node.value:
        last = node.value[-1]
        node = last[1] if isinstance(node, yaml.MappingNode) else last
    end = node.end_mark
    return end.line if end.column > 0 else end.line - 1


def _after_line(text: str, line: int) -> int:
    """The offset just past the newline that ends `line` (0-based)."""
    offset = 0
    for _ in range(line + 1):
        found = text.find("\n", offset)
        if found < 0:
            return len(text)
        offset = found + 1
    return offset


def _indent_step(root: yaml.Node) -> int:
    if isinstance(root, yaml.MappingNode) and root.value:
        key, value = root.value[0]
        if isinstance(value, yaml.MappingNode) and value.value and not value.flow_style:
            step = value.value[0][0].start_mark.column - key.start_mark.column
            if step > 0:
                return int(step)
    return 2


def _block(tree: Mapping[str, object], indent: int, step: int) -> str:
    lines: list[str] = []
    for name, child in tree.items():
        if isinstance(child, Mapping):
            lines.append(f"{' ' * indent}{_key(name)}:\n{_block(child, indent + step, step)}")
        else:
            assert isinstance(child, Set)
            lines.append(f"{' ' * indent}{_key(name)}: {_flow(child)}\n")
    return "".join(lines)


def _key(name: str) -> str:
    if _PLAIN.fullmatch(name) and name.lower() not in _YAML_WORDS:
        return name
    return json.dumps(name, ensure_ascii=False)  # a double-quoted YAML scalar


def _flow(tags: Set[str]) -> str:
    ordered = sorted(tags, key=lambda tag: (tag != "pii", tag))
    return "[" + ", ".join(ordered) + "]"
