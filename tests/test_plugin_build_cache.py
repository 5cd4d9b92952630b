"""``--rig-build-cache``: where a pytest run keeps controller builds (rig.plugin.build_cache)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rig.plugin import build_cache


def _config(value: str | None, root: Path) -> Any:
    return SimpleNamespace(getoption=lambda name: value if name == "--rig-build-cache" else None, rootpath=root)


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, "RUN/builds"),  # the run's own folder: lives and dies with the run
        ("none", None),
        ("NONE", None),
        ("/var/cache/rig-builds", "/var/cache/rig-builds"),
        ("cache/builds", "ROOT/cache/builds"),  # relative to the pytest root, as --rig-report-dir
    ],
)
def test_build_cache_default_off_switch_and_paths(tmp_path: Path, value: str | None, expected: str | None) -> None:
    run = SimpleNamespace(dir=tmp_path / "reports" / "run-1")
    got = build_cache(_config(value, tmp_path / "root"), run)  # type: ignore[arg-type]
    if expected is None:
        assert got is None
    else:
        want = expected.replace("RUN", str(run.dir)).replace("ROOT", str(tmp_path / "root"))
        assert got == Path(want)
