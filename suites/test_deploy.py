"""Deploy Shadow-box on every device: preflight, build, insmod, start markers, result code.

What a lab engineer reads from this suite: each preflight check by name with its reason, the
recipe that ran, how long build and load took, and the result code Shadow-box printed.
"""

from __future__ import annotations


def test_preflight_and_start(dut, shadowbox, rig_report):
    failed = [c for c in shadowbox.checks if c.ok is False]
    assert not failed, "preflight: " + "; ".join(f"{c.name}: {c.detail}" for c in failed)
    assert shadowbox.result_code is not None, "no result code after 'Execution Complete'"
    assert any("Execution Complete" in m for m in shadowbox.markers), shadowbox.markers
    assert dut.verdict().ok, dut.verdict().reason
