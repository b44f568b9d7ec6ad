"""A small renderer for the subset of Go templates and Helm functions the chart uses.

No ``helm`` binary is available to the tests, so this renders
``deploy/helm/computewatch`` well enough to parse and inspect its manifests.
It follows text/template's semantics for what it supports (whitespace trim
markers, pipelines, ``if``/``else if``/``with``/``range``/``define``,
variables, ``$``) and Helm's for values (missing keys render empty, numbers
print as Go's ``%v`` of a float64). Anything else raises ``TemplateError``,
so a template that strays from the subset fails the tests instead of being
rendered wrongly.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*")
      | (?P<num>-?\d+(?:\.\d+)?)
      | (?P<lp>\() | (?P<rp>\)) | (?P<pipe>\|)
      | (?P<assign>:=|=)
      | (?P<comma>,)
      | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
      | (?P<field>\.(?:[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)?)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)


class TemplateError(Exception):
    pass


class _FailError(TemplateError):
    """The template called ``fail`` or ``required`` (Helm aborts the render)."""


def go_str(value: object) -> str:
    """How text/template prints a value (Helm: nil prints as empty)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _go_float(float(value))
    if isinstance(value, str):
        return value
    raise TemplateError(f"printing a {type(value).__name__} needs toYaml or toJson: {value!r}")


def _go_float(f: float) -> str:
    """fmt's %v of a float64: strconv 'g' with the shortest digits, which
    switches to an exponent below 1e-4 and from 1e6 on (Helm's "1e+06")."""
    if f == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(f)).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    point = len(text) + exponent  # digits before the decimal point
    x = point - 1
    minus = "-" if sign else ""
    if x < -4 or x >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mantissa}e{'-' if x < 0 else '+'}{abs(x):02d}"
    if point <= 0:
        return f"{minus}0.{'0' * -point}{text}"
    if point >= len(text):
        return minus + text + "0" * (point - len(text))
    return f"{minus}{text[:point]}.{text[point:]}"


def _truthy(value: object) -> bool:
    if value is None or value is False:
        return False
    if isinstance(value, int | float | str | list | tuple | dict):
        return bool(value)
    return True


def _go_json(value: object) -> object:
    """Helm values are float64: whole numbers encode without a fraction."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, dict):
        return {k: _go_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_go_json(v) for v in value]
    return value


# --- parsing ------------------------------------------------------------------------


@dataclass
class _Node:
    kind: str  # text, action, if, with, range, define, assign
    text: str = ""
    expr: list[Any] = field(default_factory=list)
    body: list[_Node] = field(default_factory=list)
    orelse: list[_Node] = field(default_factory=list)
    vars: tuple[str, ...] = ()
    name: str = ""


def _lex(template: str) -> list[tuple[str, str]]:
    """Text and action pieces, with the trim markers applied."""
    pieces: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(template):
        text = template[pos : m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        pieces.append(("text", text))
        pieces.append(("action", m.group(2).strip()))
        trim_next = bool(m.group(3))
        pos = m.end()
    text = template[pos:]
    pieces.append(("text", text.lstrip() if trim_next else text))
    return pieces


def _tokens(src: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    src = src.rstrip()
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if not m or m.end() == pos:
            raise TemplateError(f"cannot parse {src!r} at {src[pos:]!r}")
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _parse_pipeline(toks: list[tuple[str, str]], i: int = 0) -> tuple[list[Any], int]:
    """A pipeline: a list of commands, each a list of operands."""
    commands: list[list[Any]] = [[]]
    while i < len(toks):
        kind, text = toks[i]
        if kind == "rp":
            break
        if kind == "pipe":
            commands.append([])
        elif kind == "lp":
            sub, i = _parse_pipeline(toks, i + 1)
            if i >= len(toks) or toks[i][0] != "rp":
                raise TemplateError("unbalanced parenthesis")
            commands[-1].append(("pipeline", sub))
        else:
            commands[-1].append((kind, text))
        i += 1
    if any(not c for c in commands):
        raise TemplateError("empty command in pipeline")
    return commands, i


def _split_decl(src: str) -> tuple[tuple[str, ...], str, list[Any]]:
    """``$a, $b := pipeline`` -> (("$a", "$b"), ":=", pipeline)."""
    toks = _tokens(src)
    for j, (kind, text) in enumerate(toks):
        if kind == "assign":
            names = tuple(t for k, t in toks[:j] if k == "var")
            return names, text, _parse_pipeline(toks[j + 1 :])[0]
    return (), "", _parse_pipeline(toks)[0]


def parse(template: str) -> tuple[list[_Node], dict[str, list[_Node]]]:
    """The node tree of ``template`` and the templates it defines."""
    defines: dict[str, list[_Node]] = {}
    root: list[_Node] = []
    # (block, list being filled); ``else if`` replaces its block on the stack,
    # so every ``end`` pops exactly one entry.
    stack: list[tuple[_Node | None, list[_Node]]] = [(None, root)]
    for kind, text in _lex(template):
        body = stack[-1][1]
        if kind == "text":
            if text:
                body.append(_Node("text", text=text))
            continue
        if text.startswith("/*"):
            continue
        word, _, rest = text.partition(" ")
        if word in ("if", "with", "range"):
            node = _Node(word)
            node.vars, _, node.expr = _split_decl(rest)
            body.append(node)
            stack.append((node, node.body))
        elif word == "define":
            node = _Node("define", name=json.loads(rest.strip()))
            stack.append((node, node.body))
        elif word == "else":
            owner = stack.pop()[0]
            if owner is None or owner.kind == "define":
                raise TemplateError("else outside if/with/range")
            if rest.startswith("if "):
                nested = _Node("if", expr=_split_decl(rest[3:])[2])
                owner.orelse.append(nested)
                stack.append((nested, nested.body))
            else:
                stack.append((owner, owner.orelse))
        elif word == "end":
            owner = stack.pop()[0]
            if owner is None:
                raise TemplateError("end without a block")
            if owner.kind == "define":
                defines[owner.name] = owner.body
        else:
            names, op, expr = _split_decl(text)
            if op:
                body.append(_Node("assign", vars=names, expr=expr, text=op))
            else:
                body.append(_Node("action", expr=expr))
    if len(stack) != 1:
        raise TemplateError("unclosed block")
    return root, defines


# --- evaluation ---------------------------------------------------------------------


def _indent(n: int, s: str) -> str:
    pad = " " * int(n)
    return "\n".join(pad + line for line in s.split("\n"))


def _to_yaml(value: object) -> str:
    if value is None:
        return "null"
    return yaml.safe_dump(_go_json(value), default_flow_style=False, sort_keys=True).rstrip("\n")


def _required(msg: str, value: object) -> object:
    if not _truthy(value):
        raise _FailError(msg)
    return value


def _fail(msg: str) -> object:
    raise _FailError(msg)


def _printf(fmt: str, *args: object) -> str:
    parts = iter(args)

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "%%":
            return "%"
        return go_str(next(parts))

    return re.sub(r"%%|%[sdv]", sub, fmt)


def _int(value: object) -> int:
    if isinstance(value, bool):
        raise TemplateError("int of a bool")
    return int(value)  # type: ignore[call-overload,no-any-return]


FUNCS: Mapping[str, Callable[..., object]] = {
    "default": lambda d, v=None: v if _truthy(v) else d,
    "quote": lambda v: json.dumps(go_str(v)),
    "toYaml": _to_yaml,
    "toJson": lambda v: json.dumps(_go_json(v), sort_keys=True, separators=(",", ":")),
    "nindent": lambda n, s: "\n" + _indent(n, s),
    "indent": _indent,
    "trunc": lambda n, s: s[: int(n)],
    "trimSuffix": lambda suf, s: s[: -len(suf)] if suf and s.endswith(suf) else s,
    "printf": _printf,
    "print": lambda *a: "".join(go_str(x) for x in a),
    "required": _required,
    "fail": _fail,
    "and": lambda *a: next((x for x in a if not _truthy(x)), a[-1]),
    "or": lambda *a: next((x for x in a if _truthy(x)), a[-1]),
    "not": lambda v: not _truthy(v),
    "eq": lambda a, b: a == b,
    "gt": lambda a, b: a > b,
    "len": len,
    "int": _int,
    "omit": lambda d, *keys: {k: v for k, v in (d or {}).items() if k not in keys},
    "sha256sum": lambda s: hashlib.sha256(s.encode()).hexdigest(),
    "list": lambda *a: list(a),
    # Go's index: a missing map key gives the zero value (nil here).
    "index": lambda coll, *keys: functools.reduce(
        lambda c, k: c.get(k) if isinstance(c, dict) else c[k], keys, coll
    ),
    "float64": lambda v: float(v or 0),
    "addf": lambda *a: float(sum(float(x or 0) for x in a)),
}


class Renderer:
    def __init__(self, defines: dict[str, list[_Node]]) -> None:
        self.defines = defines

    def render(self, nodes: list[_Node], dot: object, scope: dict[str, object]) -> str:
        out: list[str] = []
        for node in nodes:
            if node.kind == "text":
                out.append(node.text)
            elif node.kind == "action":
                out.append(go_str(self._pipeline(node.expr, dot, scope)))
            elif node.kind == "assign":
                (name,) = node.vars
                if node.text == "=" and name not in scope:
                    raise TemplateError(f"assignment to undeclared {name}")
                scope[name] = self._pipeline(node.expr, dot, scope)
            elif node.kind in ("if", "with"):
                value = self._pipeline(node.expr, dot, scope)
                if _truthy(value):
                    inner = dict(scope)
                    inner.update(dict.fromkeys(node.vars, value))
                    out.append(self.render(node.body, value if node.kind == "with" else dot, inner))
                    scope.update({k: v for k, v in inner.items() if k in scope})
                else:
                    out.append(self.render(node.orelse, dot, scope))
            elif node.kind == "range":
                out.append(self._range(node, dot, scope))
            else:
                raise TemplateError(f"unknown node {node.kind}")
        return "".join(out)

    def _range(self, node: _Node, dot: object, scope: dict[str, object]) -> str:
        value = self._pipeline(node.expr, dot, scope)
        if isinstance(value, dict):
            items: list[tuple[object, object]] = sorted(value.items())
        elif isinstance(value, list):
            items = list(enumerate(value))
        elif value is None:
            items = []
        else:
            raise TemplateError(f"range over {type(value).__name__}")
        if not items:
            return self.render(node.orelse, dot, scope)
        out = []
        for key, item in items:
            inner = dict(scope)
            if len(node.vars) == 2:
                inner[node.vars[0]], inner[node.vars[1]] = key, item
            elif len(node.vars) == 1:
                inner[node.vars[0]] = item
            out.append(self.render(node.body, item, inner))
        return "".join(out)

    def include(self, name: str, dot: object) -> str:
        if name not in self.defines:
            raise TemplateError(f"no template named {name!r}")
        return self.render(self.defines[name], dot, {"$": dot})

    def _pipeline(self, commands: list[Any], dot: object, scope: dict[str, object]) -> object:
        value: object = _MISSING
        for command in commands:
            value = self._command(command, dot, scope, value)
        return value

    def _command(
        self, command: list[Any], dot: object, scope: dict[str, object], piped: object
    ) -> object:
        kind, text = command[0]
        if kind == "ident" and text not in ("true", "false", "nil"):
            args = [self._operand(op, dot, scope) for op in command[1:]]
            if piped is not _MISSING:
                args.append(piped)
            if text == "include":
                return self.include(str(args[0]), args[1])
            if text not in FUNCS:
                raise TemplateError(f"function {text!r} is not in the supported subset")
            return FUNCS[text](*args)
        if len(command) != 1 or piped is not _MISSING:
            raise TemplateError(f"cannot apply arguments to {text!r}")
        return self._operand(command[0], dot, scope)

    def _operand(self, op: tuple[str, Any], dot: object, scope: dict[str, object]) -> object:
        kind, text = op
        if kind == "str":
            return json.loads(text)
        if kind == "num":
            return float(text) if "." in text else int(text)
        if kind == "ident":
            return {"true": True, "false": False, "nil": None}.get(text, _MISSING)
        if kind == "pipeline":
            return self._pipeline(text, dot, scope)
        if kind == "field":
            return _walk(dot, text.split(".")[1:] if text != "." else [])
        if kind == "var":
            name, *path = text.split(".")
            if name not in scope:
                raise TemplateError(f"undefined variable {name}")
            return _walk(scope[name], path)
        raise TemplateError(f"unexpected {kind} {text!r}")


_MISSING: Any = object()


def _walk(value: object, path: list[str]) -> object:
    for i, key in enumerate(path):
        if value is None:
            raise TemplateError(f"nil pointer evaluating .{'.'.join(path[: i + 1])}")
        if not isinstance(value, dict):
            raise TemplateError(f".{key} of a {type(value).__name__}")
        value = value.get(key)
    return value


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def render_chart(
    chart_dir: Path,
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "cw",
    namespace: str = "computewatch",
) -> dict[str, str]:
    """``helm template``: rendered text by template file name (``_*`` files excluded).

    Raises ``TemplateError`` (``fail``/``required`` included) like Helm would.
    """
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    merged = _merge(yaml.safe_load((chart_dir / "values.yaml").read_text()), values or {})
    files = sorted((chart_dir / "templates").iterdir())
    base = f"{chart['name']}/templates"
    parsed: dict[str, list[_Node]] = {}
    defines: dict[str, list[_Node]] = {}
    for path in files:
        nodes, defs = parse(path.read_text())
        defines.update(defs)
        parsed[path.name] = nodes
        defines[f"{base}/{path.name}"] = nodes
    renderer = Renderer(defines)
    out: dict[str, str] = {}
    for name, nodes in parsed.items():
        if name.startswith("_"):
            continue
        dot = {
            "Values": merged,
            "Chart": {
                "Name": chart["name"],
                "Version": chart["version"],
                "AppVersion": chart.get("appVersion"),
            },
            "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
            "Template": {"BasePath": base, "Name": f"{base}/{name}"},
        }
        out[name] = renderer.render(nodes, dot, {"$": dot})
    return out
