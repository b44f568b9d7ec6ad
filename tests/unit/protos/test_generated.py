"""The committed generated code is exactly what the pinned grpcio-tools emits."""

from __future__ import annotations

import shutil
from pathlib import Path

from protos.generate import PROTO_DIRS, generate, proto_files

ROOT = Path(__file__).resolve().parents[3]


def test_regenerating_changes_nothing(tmp_path: Path) -> None:
    for proto in proto_files(ROOT):
        dest = tmp_path / proto
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / proto, dest)
    generate(tmp_path, tmp_path)
    for proto_dir in PROTO_DIRS:
        fresh = sorted(p.name for p in (tmp_path / proto_dir).iterdir() if "_pb2" in p.name)
        committed = sorted(p.name for p in (ROOT / proto_dir).iterdir() if "_pb2" in p.name)
        assert fresh
        assert fresh == committed
        for name in fresh:
            assert (tmp_path / proto_dir / name).read_bytes() == (
                ROOT / proto_dir / name
            ).read_bytes(), f"{name} differs from the generator's output: run `make protos`"
