"""Parsing the ``nodes`` and ``faults`` parts of a scenario file."""

from __future__ import annotations

import re
from collections.abc import Mapping

from agent.fakenvml._check import Where
from agent.fakenvml.models import model_for
from agent.fakenvml.nvml_errors import documented
from agent.fakenvml.spec import (
    CALL_ERRORS,
    FAULT_KINDS,
    FAULTABLE_FUNCTIONS,
    MIG_SLICES,
    NOT_LOADED_ERRORS,
    Fault,
    GpuSpec,
    MigSlice,
    Node,
)

MAX_GPUS_PER_NODE = 64
_MIG_PROFILE = re.compile(r"([1-7])g\.([0-9]{1,4})gb")
_MAX_GROUP_NODES = 10_000

# SMs of the 7-slice GPU instance on each MIG-capable family (MIG user guide
# profile tables: A100 7g = 98 SMs of 108; H100/H200/GH200 7g = 132; B200 7g = 148).
_FULL_SMS = (("NVIDIA A100", 98), ("NVIDIA B200", 148))
_FULL_SMS_DEFAULT = 132


def full_sms(name: str) -> int:
    return next((n for prefix, n in _FULL_SMS if name.startswith(prefix)), _FULL_SMS_DEFAULT)


_NODE_KEYS = frozenset({"id", "id_prefix", "count", "start_index", "gpus", "faults"})
_GPU_KEYS = frozenset(
    {
        "model",
        "count",
        "mig",
        "tdp_watts",
        "idle_watts",
        "memory_gib",
        "sm_clock_mhz",
        "gpm",
        "external_power_limit_watts",
    }
)
_FAULT_KEYS: dict[str, frozenset[str]] = {
    "gpu_lost": frozenset({"kind", "gpu", "at"}),
    "nvml_not_loaded": frozenset({"kind", "at", "until", "error"}),
    "no_permission": frozenset({"kind", "functions", "gpus", "at", "until"}),
    "not_supported": frozenset({"kind", "functions", "gpus", "at", "until"}),
    "nvml_error": frozenset({"kind", "functions", "gpus", "at", "until", "error"}),
    "process_struct_mismatch": frozenset({"kind", "at", "until"}),
    "silent": frozenset({"kind", "at"}),
}


def parse_node_entry(w: Where, key: str, raw: object) -> list[Node]:
    """One entry of ``nodes``: a single node (``id``) or a group (``id_prefix`` + ``count``)."""
    m = w.mapping(key, raw, allowed=_NODE_KEYS, required=frozenset({"gpus"}))
    gpus = _parse_gpus(w, f"{key}.gpus", m["gpus"])
    faults = tuple(
        parse_fault(w, f"{key}.faults[{i}]", f, len(gpus))
        for i, f in enumerate(w.list(f"{key}.faults", m.get("faults", [])))
    )
    if ("id" in m) == ("id_prefix" in m):
        w.problem(key, "give exactly one of 'id' or 'id_prefix' (with 'count')")
    if "id" in m:
        for extra in ("count", "start_index"):
            if extra in m:
                w.problem(f"{key}.{extra}", f"'{extra}' goes with 'id_prefix', not 'id'")
        return [Node(w.string(f"{key}.id", m["id"]), gpus, faults)]
    prefix = w.string(f"{key}.id_prefix", m["id_prefix"])
    if "count" not in m:
        w.problem(key, "missing required key 'count' (with 'id_prefix')")
    count = w.integer(f"{key}.count", m["count"], low=1, high=_MAX_GROUP_NODES)
    first = w.integer(f"{key}.start_index", m.get("start_index", 0))
    width = max(2, len(str(first + count - 1)))
    return [Node(f"{prefix}{n:0{width}d}", gpus, faults) for n in range(first, first + count)]


def _parse_gpus(w: Where, key: str, raw: object) -> tuple[GpuSpec, ...]:
    specs: list[GpuSpec] = []
    for i, entry in enumerate(w.list(key, raw, nonempty=True)):
        k = f"{key}[{i}]"
        m = w.mapping(k, entry, allowed=_GPU_KEYS, required=frozenset({"model"}))
        name = w.string(f"{k}.model", m["model"])
        count = w.integer(f"{k}.count", m.get("count", 1), low=1, high=MAX_GPUS_PER_NODE)
        tdp = _opt_number(w, f"{k}.tdp_watts", m, low=1)
        idle = _opt_number(w, f"{k}.idle_watts", m, low=0)
        if tdp is not None and idle is not None and idle > tdp:
            w.fail(f"{k}.idle_watts", f"at most tdp_watts ({tdp:g})", idle)
        memory = _opt_number(w, f"{k}.memory_gib", m, low=0)
        clock = (
            w.integer(f"{k}.sm_clock_mhz", m["sm_clock_mhz"], low=1)
            if "sm_clock_mhz" in m
            else None
        )
        gpm = w.boolean(f"{k}.gpm", m["gpm"]) if "gpm" in m else None
        mig, slices = _parse_mig(w, f"{k}.mig", m.get("mig", False), full_sms(name))
        model = model_for(
            name,
            tdp_watts=tdp,
            idle_watts=idle,
            memory_gib=memory,
            sm_clock_mhz=clock,
            gpm=gpm,
        )
        if mig and not model.mig_capable:
            w.fail(f"{k}.mig", f"false: {name} has no MIG", True)
        if mig and not slices:
            # ``mig: true``: one MIG device spanning the whole GPU (7g).
            gib = model.memory_bytes // 1024**3
            profile = f"{MIG_SLICES}g.{gib}gb"
            slices = (MigSlice(0, profile, MIG_SLICES, model.memory_bytes, 1, full_sms(name)),)
        external = _opt_number(w, f"{k}.external_power_limit_watts", m, low=0)
        if external is not None and external < model.min_limit_watts:
            w.fail(
                f"{k}.external_power_limit_watts",
                f"at least the minimum power limit ({model.min_limit_watts:g} W)",
                external,
            )
        first = len(specs)
        specs.extend(
            GpuSpec(first + n, model, mig, slices, full_sms(name) if mig else 0, external)
            for n in range(count)
        )
        if len(specs) > MAX_GPUS_PER_NODE:
            w.problem(key, f"more than {MAX_GPUS_PER_NODE} GPUs on one node")
    return tuple(specs)


def _parse_mig(w: Where, key: str, raw: object, full: int) -> tuple[bool, tuple[MigSlice, ...]]:
    """``mig``: true/false, or the MIG devices' profiles (["3g.40gb", "4g.40gb"])."""
    if isinstance(raw, bool):
        return raw, ()
    profiles = w.list(key, raw, nonempty=True)
    out: list[MigSlice] = []
    for i, value in enumerate(profiles):
        profile = w.string(f"{key}[{i}]", value)
        match = _MIG_PROFILE.fullmatch(profile)
        if match is None:
            w.fail(f"{key}[{i}]", 'a MIG profile like "3g.40gb"', profile)
        g, gb = int(match[1]), int(match[2])
        out.append(MigSlice(i, profile, g, gb * 1024**3, i + 1, round(full * g / MIG_SLICES)))
    if sum(s.slices for s in out) > MIG_SLICES:
        w.problem(key, f"the profiles take more than the GPU's {MIG_SLICES} slices")
    return True, tuple(out)


def _opt_number(w: Where, key: str, m: Mapping[str, object], *, low: float) -> float | None:
    name = key.rsplit(".", 1)[1]
    if name not in m:
        return None
    return w.number(key, m[name], low=low, low_open=low > 0)


def parse_fault(w: Where, key: str, raw: object, gpu_count: int) -> Fault:
    """One fault of a node (``gpu_count`` bounds the GPU indices it may name)."""
    if not isinstance(raw, Mapping) or "kind" not in raw:
        w.problem(key, "expected a mapping with a 'kind' (" + ", ".join(FAULT_KINDS) + ")")
    kind = w.choice(f"{key}.kind", raw["kind"], FAULT_KINDS)
    m = w.mapping(key, raw, allowed=_FAULT_KEYS[kind])
    at = w.number(f"{key}.at", m.get("at", 0.0), low=0)
    until = None
    if m.get("until") is not None:
        until = w.number(f"{key}.until", m["until"], low=at, low_open=True)
    if kind == "gpu_lost":
        if "gpu" not in m:
            w.problem(key, "missing required key 'gpu' (the index of the lost GPU)")
        gpu = w.integer(f"{key}.gpu", m["gpu"], high=gpu_count - 1)
        return Fault(kind, at, gpu=gpu)
    if kind == "nvml_not_loaded":
        error = w.choice(f"{key}.error", m.get("error", NOT_LOADED_ERRORS[0]), NOT_LOADED_ERRORS)
        return Fault(kind, at, until, error=error)
    if kind == "silent":
        return Fault(kind, at)
    if kind == "process_struct_mismatch":
        return Fault(kind, at, until)
    if "functions" not in m:
        w.problem(key, "missing required key 'functions' (NVML function names)")
    functions = []
    for i, raw_name in enumerate(w.list(f"{key}.functions", m["functions"], nonempty=True)):
        name = w.string(f"{key}.functions[{i}]", raw_name)
        if name not in FAULTABLE_FUNCTIONS:
            w.fail(f"{key}.functions[{i}]", "an NVML function the fake implements", name)
        functions.append(name)
    gpus = None
    if "gpus" in m:
        gpus = tuple(
            w.integer(f"{key}.gpus[{i}]", g, high=gpu_count - 1)
            for i, g in enumerate(w.list(f"{key}.gpus", m["gpus"], nonempty=True))
        )
    error = "no_permission" if kind == "no_permission" else "not_supported"
    if kind == "nvml_error":
        error = w.choice(f"{key}.error", m.get("error", CALL_ERRORS[0]), CALL_ERRORS)
    for i, name in enumerate(functions):
        if not documented(name, error.upper()):
            w.problem(
                f"{key}.functions[{i}]",
                f"nvml.h does not document NVML_ERROR_{error.upper()} for {name}",
            )
    if kind == "nvml_error":
        return Fault(kind, at, until, gpus=gpus, functions=tuple(functions), error=error)
    return Fault(kind, at, until, gpus=gpus, functions=tuple(functions))
