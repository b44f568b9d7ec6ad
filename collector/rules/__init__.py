"""Rule packs: the model, the checker/loader, and the evaluation engine.

``load_packs(paths)`` checks and loads packs (raising ``RuleCheckError``, a
``protos.errors.RuleError``, with every finding); ``RuleEngine(packs)``
turns each tick's ``Snapshot`` into ``Decision`` objects; ``replay`` runs
packs over a ledger after the fact.
"""

from __future__ import annotations

from collector.rules.engine import RuleEngine
from collector.rules.load import (
    Finding,
    RuleCheckError,
    builtin_pack_names,
    builtin_pack_path,
    check_files,
    load_packs,
    resolve_pack,
)
from collector.rules.model import (
    Action,
    Bound,
    Comparison,
    Decision,
    DecisionKind,
    Lineage,
    Rule,
    RulePack,
    Source,
)

__all__ = [
    "Action",
    "Bound",
    "Comparison",
    "Decision",
    "DecisionKind",
    "Finding",
    "Lineage",
    "Rule",
    "RuleCheckError",
    "RuleEngine",
    "RulePack",
    "Source",
    "builtin_pack_names",
    "builtin_pack_path",
    "check_files",
    "load_packs",
    "resolve_pack",
]
