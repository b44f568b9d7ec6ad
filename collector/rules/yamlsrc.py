"""YAML with line numbers: parse once, keep the composed node tree.

PyYAML follows YAML 1.1, where ``1e25`` (no dot, unsigned exponent) is a
string. Rule packs are written with thresholds like ``1e25``, so the loader
here also resolves YAML 1.2 style floats (``1e25``, ``7E+17``, ``2.5e-3``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode


class _Loader(yaml.SafeLoader):
    """SafeLoader plus YAML 1.2 exponent floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)

PathPart = str | int

# Aliases let a small file stand for a huge tree ("billion laughs"); every
# later pass walks the expanded tree, so it is bounded here.
MAX_EXPANDED_NODES = 100_000


@dataclass(frozen=True)
class Document:
    """A parsed YAML document: the plain data and the node tree it came from."""

    data: object
    root: Node | None


class YamlSyntaxError(Exception):
    """The text is not one well-formed YAML document."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def parse(text: str) -> Document:
    """Parse one YAML document, keeping its nodes (for line numbers)."""
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:
        # Control characters are refused before parsing starts.
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        what = f"character U+{exc.character:04X} is not allowed"
        raise YamlSyntaxError(line, what) from exc
    try:
        root = loader.get_single_node()
        if root is not None and expanded_size(root) > MAX_EXPANDED_NODES:
            what = f"the document expands to more than {MAX_EXPANDED_NODES} nodes (aliases?)"
            raise YamlSyntaxError(line_of(root), what)
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise YamlSyntaxError(line, problem or "not valid YAML") from exc
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(1, str(exc)) from exc
    except RecursionError as exc:
        raise YamlSyntaxError(1, "nesting too deep") from exc
    finally:
        loader.dispose()
    return Document(data, root)


def expanded_size(root: Node) -> int:
    """Nodes in the tree with every alias expanded; linear in the node graph."""
    sizes: dict[int, int] = {}
    # Iterative post-order, so deep nesting cannot overflow the stack.
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in sizes:
            continue
        kids = _children(node)
        if done:
            sizes[id(node)] = min(1 + sum(sizes.get(id(k), 0) for k in kids), 1 << 40)
            continue
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in sizes)
    return sizes[id(root)]


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair if isinstance(n, Node)]
    if isinstance(node, SequenceNode):
        return [n for n in node.value if isinstance(n, Node)]
    return []


def line_of(node: Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 1


def child(node: Node | None, part: PathPart) -> Node | None:
    """The value node under ``part`` (a mapping key or a list index)."""
    if isinstance(node, MappingNode) and isinstance(part, str):
        for key, value in node.value:
            if isinstance(key, ScalarNode) and key.value == part and isinstance(value, Node):
                return value
    if isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item = node.value[part]
        return item if isinstance(item, Node) else None
    return None


def key_node(node: Node | None, key: str) -> Node | None:
    """The key node of ``key`` in a mapping (where an unknown key is written)."""
    if isinstance(node, MappingNode):
        for k, _ in node.value:
            if isinstance(k, ScalarNode) and k.value == key:
                return k
    return None


def deepest(root: Node | None, path: Sequence[PathPart]) -> Node | None:
    """The node at ``path``, or the deepest ancestor of it that exists."""
    node = root
    for part in path:
        nxt = child(node, part)
        if nxt is None:
            return node
        node = nxt
    return node


def duplicate_keys(root: Node | None) -> Iterator[tuple[tuple[PathPart, ...], str, int]]:
    """Every mapping key written twice: (path of the mapping, key, line).

    PyYAML keeps the last value silently; a pack that says ``threshold`` twice
    is a mistake worth naming. Bounded by the size of the tree.
    """
    stack: list[tuple[tuple[PathPart, ...], Node]] = [((), root)] if root is not None else []
    while stack:
        path, node = stack.pop()
        if isinstance(node, MappingNode):
            seen: set[str] = set()
            for k, v in node.value:
                if isinstance(k, ScalarNode):
                    if k.value in seen:
                        yield path, k.value, line_of(k)
                    seen.add(k.value)
                    stack.append(((*path, k.value), v))
        elif isinstance(node, SequenceNode):
            stack.extend(((*path, i), item) for i, item in enumerate(node.value))
