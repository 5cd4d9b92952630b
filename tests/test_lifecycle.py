"""The device lifecycle (rig.device.lifecycle) without a device: states, legal steps, the plan to a state.

The driver below stands for the Dut only in what the lifecycle asks of it (recover, watch) and
records the same steps the Dut records; the Dut's own steps run in the lab tests
(tests/test_rig_lab.py, tests/test_plugin_lab.py).
"""

from __future__ import annotations

import pytest

from rig.device.facts import DeviceFacts, parse_facts
from rig.device.lifecycle import DeviceState, Lifecycle, LifecycleError, Step

S = DeviceState


class Driver:
    """Does what rig.device.dut.Dut.recover / watch record in the lifecycle, and remembers the calls."""

    def __init__(self) -> None:
        self.lc = Lifecycle("t14", self)
        self.calls: list[str] = []

    def recover(self, *, timeout: float | None = None, start_monitor: bool = True) -> float:
        self.calls.append(f"recover(start_monitor={start_monitor})")
        self.lc.apply(Step.POWER_CYCLE)
        self.lc.apply(Step.READY)
        if start_monitor:
            self.lc.apply(Step.WATCH)
        return 1.0

    def watch(self) -> None:
        self.calls.append("watch")
        self.lc.apply(Step.WATCH)


def opened() -> Driver:
    d = Driver()
    d.lc.apply(Step.CONNECT)
    d.lc.apply(Step.WATCH)
    return d


def test_an_opened_device_is_watched_and_a_deploy_makes_it_deployed() -> None:
    d = opened()
    assert d.lc.state is S.WATCHED and d.lc.watching and not d.lc.loaded
    d.lc.apply(Step.DEPLOY)
    assert d.lc.state is S.DEPLOYED and d.lc.loaded
    d.lc.apply(Step.WATCH)  # a fresh watch of a deployed device does not unload Shadow-box
    assert d.lc.state is S.DEPLOYED
    assert [c.step for c in d.lc.history] == [Step.CONNECT, Step.WATCH, Step.DEPLOY, Step.WATCH]


def test_asking_for_watched_rewatches_a_healthy_device_and_recovers_a_failed_one() -> None:
    d = opened()
    assert d.lc.transition(S.WATCHED) is S.WATCHED
    assert d.calls == ["watch"]
    d.lc.fail("hang")
    assert d.lc.needs_fresh_boot
    assert d.lc.plan(S.WATCHED) == [Step.POWER_CYCLE, Step.READY, Step.WATCH]
    assert d.lc.transition(S.WATCHED) is S.WATCHED
    assert d.calls == ["watch", "recover(start_monitor=True)"]
    assert d.lc.failure == "" and not d.lc.needs_fresh_boot


def test_a_clean_boot_is_asked_for_only_when_something_was_loaded() -> None:
    d = opened()
    assert d.lc.plan(S.WATCHED, clean=True) == [Step.WATCH]  # nothing loaded: no reboot
    d.lc.note_loaded()  # a deploy that reached insmod and failed
    assert d.lc.state is S.WATCHED and d.lc.needs_fresh_boot
    assert d.lc.plan(S.WATCHED) == [Step.WATCH]  # the plugin's next test: no reboot for a refused deploy
    d.lc.transition(S.WATCHED, clean=True)  # bisect: every attempt on its own boot
    assert d.calls == ["recover(start_monitor=True)"] and not d.lc.loaded


def test_asking_for_ready_powers_a_held_device_anew_without_watching() -> None:
    d = opened()
    d.lc.apply(Step.DEPLOY)
    d.lc.transition(S.READY, clean=True)
    assert d.calls == ["recover(start_monitor=False)"] and d.lc.state is S.READY and not d.lc.watching


@pytest.mark.parametrize(
    ("setup", "step", "words"),
    [
        ([], Step.WATCH, "cannot watch while it is off; open the device first"),
        ([], Step.DEPLOY, "cannot deploy while it is off"),
        ([Step.CONNECT, Step.WATCH, Step.FAIL], Step.DEPLOY, "cannot deploy while it is failed (hang: silent 3 s)"),
        ([Step.CONNECT, Step.WATCH, Step.FAIL], Step.WATCH, "recover it first"),
        ([Step.CONNECT, Step.DEPLOY], Step.DEPLOY, "Shadow-box cannot be unloaded"),
        ([Step.CONNECT], Step.READY, "cannot ready while it is ready"),
        ([Step.CONNECT], Step.CONNECT, "cannot connect while it is ready"),
        ([Step.POWER_CYCLE], Step.DEPLOY, "cannot deploy while it is booting; wait until it is ready"),
        ([], Step.FAIL, "cannot fail while it is off"),
    ],
)
def test_an_illegal_step_names_the_device_the_state_and_what_to_do(
    setup: list[Step], step: Step, words: str
) -> None:
    lc = Lifecycle("t14")
    for s in setup:
        lc.apply(s, "hang: silent 3 s" if s is Step.FAIL else "")
    before = lc.state
    with pytest.raises(LifecycleError) as exc:
        lc.apply(step)
    assert str(exc.value).startswith("device t14: "), exc.value
    assert words in str(exc.value), exc.value
    assert lc.state is before  # a refused step changes nothing


def test_the_first_failure_is_the_one_told_and_close_is_always_allowed() -> None:
    d = opened()
    d.lc.fail("crash(panic)")
    d.lc.fail("lost-connection")
    assert d.lc.failure == "crash(panic)"
    d.lc.apply(Step.CLOSE)
    assert d.lc.state is S.OFF and not d.lc.watching


def test_only_ready_and_watched_can_be_asked_for() -> None:
    d = opened()
    with pytest.raises(LifecycleError, match="device t14: 'deployed' is not a state to ask for"):
        d.lc.plan(S.DEPLOYED)
    with pytest.raises(LifecycleError, match="device t14: cannot reach watched while it is off"):
        Lifecycle("t14").plan(S.WATCHED)
    with pytest.raises(LifecycleError, match="no device to drive"):
        lc = Lifecycle("t14")
        lc.apply(Step.CONNECT)
        lc.transition(S.WATCHED)


def test_facts_are_parsed_from_one_command_and_missing_ones_stay_empty() -> None:
    out = (
        "kernel=6.1.0-rig\ncmdline=console=ttyS0 intremap=off\ncpu_model= QEMU TCG CPU version 2.5+\n"
        "microcode=\ncpus=2\nvmx=no\nmodules=sbsim e1000 \nnoise=1\nkernel=not-this\n"
    )
    f = parse_facts(out)
    assert f == DeviceFacts("6.1.0-rig", "console=ttyS0 intremap=off", "QEMU TCG CPU version 2.5+", "", "2", False,
                            ("sbsim", "e1000"))  # fmt: skip
    assert f.identity() == {"kernel": "6.1.0-rig", "cmdline": "console=ttyS0 intremap=off",
                            "cpu_model": "QEMU TCG CPU version 2.5+", "microcode": "", "cpus": "2"}  # fmt: skip
    assert parse_facts("vmx=yes\n").vmx and parse_facts("") == DeviceFacts()


def test_an_unload_makes_the_boot_clean_so_a_clean_watch_needs_no_boot() -> None:
    # sbsim (the lab's stand-in) unloads; after it a bisect attempt asking for a clean boot gets a watch.
    d = opened()
    d.lc.apply(Step.DEPLOY)
    assert d.lc.plan(S.WATCHED, clean=True)[0] is Step.POWER_CYCLE
    d.lc.apply(Step.UNLOAD)
    assert d.lc.state is S.WATCHED and not d.lc.loaded and not d.lc.needs_fresh_boot
    assert d.lc.transition(S.WATCHED, clean=True) is S.WATCHED
    assert d.calls == ["watch"]
    d.lc.fail("hang")
    with pytest.raises(LifecycleError, match="t14: cannot unload while it is failed"):
        d.lc.apply(Step.UNLOAD)
