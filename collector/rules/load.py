"""Check and load rule packs: every mistake, with file, line and rule id.

Three passes per file: YAML (syntax, duplicate keys), the JSON Schema in
``rules/schema.json`` (structure), then the semantic checks in
``collector.rules.checks`` (metric per scope, unit per metric, throttle caps,
hysteresis, lineage scope, sources). Across files: duplicate pack names and
rule ids. ``load_packs`` builds packs only when nothing at all was found.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from collector.rules import yamlsrc
from collector.rules.checks import Finding, build_pack, check_rules, subject_for
from collector.rules.model import RulePack
from protos.errors import RuleError

log = logging.getLogger(__name__)

__all__ = [
    "CheckResult",
    "Finding",
    "RuleCheckError",
    "builtin_pack_names",
    "builtin_pack_path",
    "check_files",
    "load_packs",
    "resolve_pack",
]

MAX_PACK_BYTES = 1 << 20


class RuleCheckError(RuleError):
    """One or more rule packs fail the check; ``findings`` lists every mistake."""

    def __init__(self, findings: Sequence[Finding]) -> None:
        self.findings = tuple(findings)
        lines = "\n".join(str(f) for f in self.findings)
        n = len(self.findings)
        super().__init__(f"{n} problem{'s' if n != 1 else ''} in rule packs:\n{lines}")


@dataclass(frozen=True)
class CheckResult:
    findings: tuple[Finding, ...]
    # Packs from files with no findings of their own.
    packs: tuple[RulePack, ...]

    @property
    def ok(self) -> bool:
        return not self.findings


@cache
def _validator() -> Draft202012Validator:
    text = resources.files("rules").joinpath("schema.json").read_text(encoding="utf-8")
    schema = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def builtin_pack_names() -> tuple[str, ...]:
    """Names of the packs shipped in the ``rules`` package."""
    packs = resources.files("rules").joinpath("packs")
    return tuple(
        sorted(p.name[: -len(".yaml")] for p in packs.iterdir() if p.name.endswith(".yaml"))
    )


def builtin_pack_path(name: str) -> Path:
    """The file of shipped pack ``name`` (e.g. ``eu-ai-act``); RuleError if none."""
    ref = resources.files("rules").joinpath("packs", f"{name}.yaml")
    if "/" in name or "\\" in name or not ref.is_file():
        known = ", ".join(builtin_pack_names())
        raise RuleError(f"no shipped rule pack named {name!r}; shipped packs: {known}")
    return Path(str(ref))


# Pack files a directory may hold; more is a mistake (not a rules directory).
MAX_PACKS_PER_DIRECTORY = 256


def resolve_packs(names: Iterable[str | Path]) -> list[Path]:
    """Pack files for each argument: a directory gives its ``*.yaml``/``*.yml``
    files (sorted, not recursive), anything else ``resolve_pack``."""
    out: list[Path] = []
    for name in names:
        path = Path(name)
        if not path.is_dir():
            out.append(resolve_pack(name))
            continue
        found = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        if not found:
            raise RuleError(f"rule pack directory {path} holds no .yaml or .yml files")
        if len(found) > MAX_PACKS_PER_DIRECTORY:
            raise RuleError(
                f"rule pack directory {path} holds {len(found)} pack files;"
                f" at most {MAX_PACKS_PER_DIRECTORY}"
            )
        out.extend(found)
    return out


def resolve_pack(name_or_file: str | Path) -> Path:
    """A pack file path: an existing file as given, else a shipped pack's name."""
    path = Path(name_or_file)
    if path.is_file():
        return path
    text = str(name_or_file)
    if path.suffix in (".yaml", ".yml") or "/" in text:
        raise RuleError(f"rule pack file {text} does not exist")
    return builtin_pack_path(text)


def _schema_finding(file: str, doc: yamlsrc.Document, err: ValidationError) -> Finding:
    path = tuple(err.absolute_path)
    subject = subject_for(doc.data, path)
    schema: dict[str, Any] = err.schema if isinstance(err.schema, dict) else {}
    expected = str(schema.get("description") or "")
    field = str(path[-1]) if path and isinstance(path[-1], str) else ""
    node = yamlsrc.deepest(doc.root, path)
    what = err.message
    if not path:
        expected = "a mapping with pack, version, description and rules"
    if err.validator == "required":
        props = schema.get("properties", {})
        instance = err.instance if isinstance(err.instance, dict) else {}
        required = err.validator_value if isinstance(err.validator_value, list) else []
        missing = [p for p in required if p not in instance]
        name = missing[0] if missing else "?"
        what = f"missing field {name!r}"
        expected = f"{name}: {props.get(name, {}).get('description', 'a value')}"
    elif err.validator == "additionalProperties":
        known = sorted(schema.get("properties", {}))
        instance = err.instance if isinstance(err.instance, dict) else {}
        extra = sorted(str(k) for k in instance if k not in known)
        name = extra[0] if extra else "?"
        node = yamlsrc.key_node(node, name) or node
        what = f"unknown field {name!r}"
        expected = f"one of the fields {', '.join(known)}"
    elif err.validator == "type" and path:
        what = f"{field or 'value'} is {err.instance!r} (a {_json_type(err.instance)})"
    elif path:
        what = f"{field or 'value'} is {err.instance!r}"
    elif err.validator == "type":
        what = f"the document is a {_json_type(err.instance)}"
    return Finding(file, yamlsrc.line_of(node), subject, what, expected or err.message)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "mapping",
    }.get(type(value), type(value).__name__)


@dataclass
class _FileCheck:
    findings: list[Finding]
    pack: RulePack | None = None
    # Names as written, for the checks across files: (name, line).
    pack_name: tuple[str, int] | None = None
    rule_ids: list[tuple[str, int]] = field(default_factory=list)


def _names(check: _FileCheck, doc: yamlsrc.Document) -> None:
    data = doc.data
    if not isinstance(data, dict):
        return
    if isinstance(data.get("pack"), str):
        check.pack_name = (data["pack"], yamlsrc.line_of(yamlsrc.child(doc.root, "pack")))
    rules = data.get("rules")
    rules_node = yamlsrc.child(doc.root, "rules")
    seen: set[str] = set()
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        rid = rule.get("id") if isinstance(rule, dict) else None
        if isinstance(rid, str) and rid not in seen:  # repeats within a file: check_rules
            seen.add(rid)
            node = yamlsrc.child(yamlsrc.child(rules_node, i), "id")
            check.rule_ids.append((rid, yamlsrc.line_of(node)))


def _check_file(path: Path) -> _FileCheck:
    file = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        what = f"cannot read the file ({exc.strerror})"
        return _FileCheck([Finding(file, 1, "pack", what, "a readable file")])
    if len(raw) > MAX_PACK_BYTES:
        what = f"the file is {len(raw)} bytes"
        return _FileCheck([Finding(file, 1, "pack", what, f"at most {MAX_PACK_BYTES} bytes")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _FileCheck([Finding(file, 1, "pack", f"not UTF-8 ({exc.reason})", "UTF-8 text")])
    try:
        doc = yamlsrc.parse(text)
    except yamlsrc.YamlSyntaxError as exc:
        return _FileCheck([Finding(file, exc.line, "yaml", exc.message, "well-formed YAML")])
    check = _FileCheck(
        [
            Finding(
                file,
                line,
                subject_for(doc.data, path),
                f"field {key!r} appears twice",
                "each field once",
            )
            for path, key, line in yamlsrc.duplicate_keys(doc.root)
        ]
    )
    _names(check, doc)
    errors = sorted(
        _validator().iter_errors(doc.data), key=lambda e: [str(p) for p in e.absolute_path]
    )
    check.findings.extend(_schema_finding(file, doc, e) for e in errors)
    if isinstance(doc.data, dict):
        check.findings.extend(check_rules(file, doc))
    if not check.findings:
        check.pack = build_pack(file, doc)
    return check


def check_files(paths: Iterable[Path]) -> CheckResult:
    """Check every file and the set as a whole; never raises for pack content."""
    checks = {str(p): _check_file(p) for p in paths}
    findings = [f for c in checks.values() for f in c.findings]
    findings.extend(_across_files(checks))
    findings.sort(key=lambda f: (f.file, f.line))
    packs = tuple(c.pack for c in checks.values() if c.pack is not None)
    return CheckResult(tuple(findings), packs)


def _across_files(checks: Mapping[str, _FileCheck]) -> Iterator[Finding]:
    """Pack names and rule ids used in more than one file."""
    pack_at: dict[str, str] = {}
    rule_at: dict[str, str] = {}
    for file, check in checks.items():
        if check.pack_name is not None:
            name, line = check.pack_name
            if name in pack_at:
                what = f"pack name already used at {pack_at[name]}"
                yield Finding(file, line, f"pack {name}", what, "a pack name unique among packs")
            pack_at.setdefault(name, f"{file}:{line}")
        for rid, line in check.rule_ids:
            if rid in rule_at and not rule_at[rid].startswith(f"{file}:"):
                what = f"id already used at {rule_at[rid]}"
                yield Finding(file, line, f"rule {rid}", what, "a rule id unique across every pack")
            rule_at.setdefault(rid, f"{file}:{line}")


def load_packs(paths: Iterable[str | Path]) -> tuple[RulePack, ...]:
    """Load packs (files or shipped names); RuleCheckError with every finding.

    The collector calls this at start-up and refuses to start when it raises.
    No paths load no packs (the collector then only records and monitors).
    """
    resolved = resolve_packs(paths)
    result = check_files(resolved)
    if not result.ok:
        for finding in result.findings:
            log.error("rule pack check: %s", finding)
        raise RuleCheckError(result.findings)
    log.info(
        "loaded %d rule packs (%d rules): %s",
        len(result.packs),
        sum(len(p.rules) for p in result.packs),
        ", ".join(f"{p.name}@{p.version}" for p in result.packs),
    )
    return result.packs
