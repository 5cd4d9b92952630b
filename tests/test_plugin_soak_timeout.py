"""A soak test outlives the project's pytest-timeout ini: the plugin gives it soak length + margin.

Runs pytest (pytester, in this process) with the rig plugin on a throw-away suite (no device is contacted).
"""

from __future__ import annotations

import pytest

from rig.plugin import SOAK_TIMEOUT_MARGIN_S
from tests.helpers import run_plugin

pytest_plugins = ("pytester",)

SUITE = """
import pytest

@pytest.mark.soak
def test_soak(request):
    print("soak-timeout", request.node.get_closest_marker("timeout").args[0])

@pytest.mark.soak
@pytest.mark.timeout(7)
def test_own_timeout(request):
    print("own-timeout", request.node.get_closest_marker("timeout").args[0])

def test_plain(request):
    print("plain-timeout", request.node.get_closest_marker("timeout"))
"""


def test_soak_tests_get_their_soak_length_plus_margin(pytester: pytest.Pytester) -> None:
    (pytester.path / "test_soak_suite.py").write_text(SUITE)
    suite = str(pytester.path / "test_soak_suite.py")
    proc = run_plugin(pytester, suite, "--rig-soak-minutes", "30", "-s", "--timeout", "5")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"soak-timeout {30 * 60 + SOAK_TIMEOUT_MARGIN_S}" in out
    assert "own-timeout 7" in out  # a test's own marker wins
    assert "plain-timeout None" in out  # other tests keep the ini/--timeout value
