"""Regenerate the committed protobuf and gRPC code.

Run ``python -m protos.generate`` from the repository root. The output is
deterministic for a given ``grpcio-tools`` version (pinned in pyproject.toml);
``tests/unit/protos/test_generated.py`` fails when the committed files differ
from what that version produces.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

PROTO_DIR = Path("protos") / "computewatch" / "v1"
# Our own subset of the kubelet's PodResources API (same package and numbers).
PODRESOURCES_DIR = Path("protos") / "k8s" / "podresources" / "v1"
PROTO_DIRS = (PROTO_DIR, PODRESOURCES_DIR)


def proto_files(root: Path) -> list[Path]:
    """The .proto sources, relative to ``root``, in a stable order."""
    return sorted(p.relative_to(root) for d in PROTO_DIRS for p in (root / d).glob("*.proto"))


def generate(root: Path, out: Path) -> None:
    """Compile every .proto under ``root`` into ``out`` (may equal ``root``)."""
    from grpc_tools import protoc  # build-time dependency only

    include = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p) for p in proto_files(root)),
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")


def main() -> int:
    root = Path.cwd()
    if not (root / PROTO_DIR).is_dir():
        print(f"run from the repository root: {PROTO_DIR} not found", file=sys.stderr)
        return 2
    generate(root, root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
