"""rig.console.netconsole over real UDP sockets on 127.0.0.1: a sender speaking the kernel's extended format.

No mocks: the capture binds a real UDP port, tests/netconsolepeer.py sends the datagrams the
kernel's netconsole sends (records, ncfrag fragments, gaps, duplicates, garbage, a 10 MB burst).
The device side (configfs target, a real kernel) is in tests/test_netconsole_lab.py.
"""

from __future__ import annotations

import os
import random
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from rig.console.capture import ConsoleLine, console_for
from rig.console.netconsole import MARK, NetconsoleCapture, NetconsoleStream, SeqGap
from rig.detect.detector import Detector
from rig.errors import LabFault, Unavailable
from rig.inventory import ConsoleConfig
from tests.consolepeers import wait_for, wait_for_quiet
from tests.netconsolepeer import Sender, datagrams, free_udp_port, record

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (.*)$")


def log_texts(path: Path) -> list[str]:
    out = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        m = LOG_LINE.match(raw)
        assert m, raw
        out.append(m.group(1))
    return out


@pytest.fixture
def port() -> int:
    return free_udp_port()


@pytest.fixture
def capture(tmp_path: Path, port: int) -> Iterator[NetconsoleCapture]:
    c = console_for(f"netconsole://127.0.0.1:{port}", tmp_path / "logs", name="nc-dev", sources=["127.0.0.1"])
    assert isinstance(c, NetconsoleCapture)
    c.start()
    try:
        assert c.wait_connected(5)
        yield c
    finally:
        c.stop()


@pytest.fixture
def sender(port: int) -> Iterator[Sender]:
    s = Sender(port)
    try:
        yield s
    finally:
        s.close()


def test_extended_records_become_serial_like_lines_on_disk_first(capture: NetconsoleCapture, sender: Sender) -> None:
    seen: list[tuple[str, bool]] = []
    capture.subscribe(lambda ln: seen.append((ln.text, ln.text in log_texts(capture.log_path))))
    sent = b""
    for g in (
        sender.send_record(10, "Linux version 6.1.0-57-amd64", usec=0),
        sender.send_record(11, "e1000 0000:00:02.0 eth0: (PCI:33MHz:32-bit) 52:54:00:12:34:56", usec=1234567,
                           dict_lines=["SUBSYSTEM=pci", "DEVICE=+pci:0000:00:02.0"]),
        sender.send_record(12, "tab\there, a backslash \\ and \u00e9", usec=2_000_001, level=4),
    ):
        sent += b"".join(g)
    line = capture.expect(r"backslash", 5, since=0)
    assert line.text == "[    2.000001] tab\there, a backslash \\ and \u00e9"
    wait_for(lambda: capture.raw_path.read_bytes() == sent, 5, "console.raw = the exact datagrams")
    assert log_texts(capture.log_path) == [
        "[    0.000000] Linux version 6.1.0-57-amd64",
        "[    1.234567] e1000 0000:00:02.0 eth0: (PCI:33MHz:32-bit) 52:54:00:12:34:56",
        "[    2.000001] tab\there, a backslash \\ and \u00e9",
    ]
    wait_for(lambda: len(seen) == 3, 5, "the subscriber saw three lines")
    assert all(on_disk for _, on_disk in seen)
    st_ = capture.stats()
    assert (st_["transport"], st_["records"], st_["lost"], st_["first_seq"], st_["last_seq"]) == (
        "netconsole", 3, 0, 10, 12)


def test_embedded_newline_gives_one_line_each(capture: NetconsoleCapture, sender: Sender) -> None:
    sender.send_record(1, "first half\nsecond half", usec=5_000_000)
    capture.expect("second half", 5, since=0)
    assert log_texts(capture.log_path) == ["[    5.000000] first half", "[    5.000000] second half"]


def test_fragments_are_joined_in_any_order(capture: NetconsoleCapture, sender: Sender) -> None:
    long_text = "BUG: unable to handle page fault " + "".join(f"R{i:04d}=ffff888012345678 " for i in range(150))
    grams = datagrams(record(40, long_text, usec=7_000_000))
    assert len(grams) >= 3 and all(len(g) <= 1000 for g in grams) and b"ncfrag=0/" in grams[0]
    for g in [grams[1], grams[0], *grams[2:]]:
        sender.send(g)
    line = capture.expect("BUG: unable", 5, since=0)
    assert line.text == "[    7.000000] " + long_text
    assert log_texts(capture.log_path) == ["[    7.000000] " + long_text]
    st_ = capture.stats()
    assert (st_["records"], st_["fragmented_records"], st_["fragments"], st_["lost"]) == (1, 1, len(grams), 0)
    ev = Detector(booted=True).feed(line.text)
    assert ev, "the joined record is a crash line to the detector"


def test_gap_counted_marked_and_reported(capture: NetconsoleCapture, sender: Sender) -> None:
    for seq in [*range(4400, 4411), *range(4422, 4425)]:
        sender.send_record(seq, f"line {seq}")
    capture.expect("line 4424", 5, since=0)
    texts = log_texts(capture.log_path)
    assert f"{MARK} 11 records lost between seq 4410 and 4422" in texts
    assert texts.index(f"{MARK} 11 records lost between seq 4410 and 4422") == texts.index(
        f"[    {1 + 4422 // 1000}.{4422 % 1000 * 1000:06d}] line 4422") - 1
    st_ = capture.stats()
    assert st_["lost"] == 11 and st_["gaps_total"] == 1
    assert st_["gaps"][0]["text"] == "11 records lost between seq 4410 and 4422"  # type: ignore[index]


def test_duplicates_dropped_late_records_fill_the_gap(capture: NetconsoleCapture, sender: Sender) -> None:
    for seq in (1, 2, 2, 5, 3, 6):
        sender.send_record(seq, f"rec {seq}")
    capture.expect("rec 6", 5, since=0)
    texts = [t for t in log_texts(capture.log_path) if not t.startswith(MARK)]
    assert [t.split()[-1] for t in texts] == ["1", "2", "5", "3", "6"]
    st_ = capture.stats()
    assert (st_["duplicates"], st_["reordered"], st_["lost"]) == (1, 1, 1)  # seq 4 never came


def test_a_reboot_restarts_the_sequence_without_dropping_its_boot_log(capture: NetconsoleCapture,
                                                                     sender: Sender) -> None:
    for seq in range(0, 5):
        sender.send_record(seq, f"first boot {seq}", usec=seq * 10)
    for seq in range(0, 3):
        sender.send_record(seq, f"second boot {seq}", usec=seq * 10 + 3)  # same seqs, another boot
    capture.expect("second boot 2", 5, since=0)
    texts = log_texts(capture.log_path)
    assert sum("second boot" in t for t in texts) == 3
    st_ = capture.stats()
    assert (st_["restarts"], st_["duplicates"], st_["lost"]) == (1, 0, 0)


def test_a_reboot_seen_from_mid_stream_is_a_restart_not_late_records(capture: NetconsoleCapture,
                                                                       sender: Sender) -> None:
    """The rig started listening at seq 400 (40 s after boot); the reboot's seq 0.. are lower than anything seen."""
    for seq in range(400, 403):
        sender.send_record(seq, f"old boot {seq}", usec=40_000_000 + seq)
    for seq in range(0, 3):
        sender.send_record(seq, f"new boot {seq}", usec=seq * 1000)
    capture.expect("new boot 2", 5, since=0)
    st_ = capture.stats()
    assert (st_["restarts"], st_["reordered"], st_["lost"], st_["last_seq"]) == (1, 0, 0, 2)


def test_garbage_and_strangers_are_kept_counted_and_survived(capture: NetconsoleCapture, sender: Sender,
                                                            port: int) -> None:
    sender.send_record(1, "before the garbage")
    garbage = [
        os.urandom(700),
        b"6,notanumber,5,-;text",
        b"6,2,3,-,ncfrag=zz/10;half a fragment",
        b"6,3,4,-,ncfrag=50/10;offset beyond its total",
        b"",
        b"\xff" * 3000,
    ]
    for g in garbage:
        sender.send(g)
    stranger = Sender(port, source="127.0.0.2")
    try:
        stranger.send(b"6,99,1,-;Kernel panic - not syncing: from someone else\n")
    finally:
        stranger.close()
    sender.send_record(4, "after the garbage")
    capture.expect("after the garbage", 5, since=0)
    assert capture.raw_path.read_bytes().count(b"\xff" * 3000) == 1
    assert not any("someone else" in t for t in log_texts(capture.log_path))
    wait_for(lambda: capture.foreign_path.exists() and "someone else" in capture.foreign_path.read_text(), 5,
             "the stranger's datagram kept aside")
    st_ = capture.stats()
    assert st_["foreign_datagrams"] == 1 and st_["foreign_sources"] == {"127.0.0.2": 1}
    assert st_["malformed"] >= 4
    assert capture.internal_errors == 0 and capture.connected


def test_ten_megabyte_burst_is_on_disk_and_every_loss_accounted(capture: NetconsoleCapture, sender: Sender) -> None:
    text = "rig-flood " + "x" * 960
    n = (10 << 20) // 1000
    for seq in range(n):
        sender.send_record(seq, text)
    # The end mark must not meet a full socket buffer (it would be dropped like the burst's records):
    # send it once the reader has drained what the kernel kept, however slowly a loaded machine lets it.
    wait_for_quiet(lambda: capture.bytes_received, 1.0, 120, "the reader draining the burst")
    sender.send_record(n, "end of the burst")
    capture.expect("end of the burst", 60, since=0)
    st_ = capture.stats()
    # Every record the device sent is either shown or counted lost; the socket buffer's drops are the loss.
    assert st_["records"] + st_["lost"] == n + 1
    assert st_["lost"] == st_["socket_drops"]
    assert capture.raw_path.stat().st_size == capture.bytes_received
    assert capture.raw_path.read_bytes().count(b";rig-flood ") == st_["records"] - 1  # type: ignore[operator]
    assert capture.internal_errors == 0 and capture.connected


def test_port_in_use_is_a_lab_fault_naming_device_and_fix(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        taken = holder.getsockname()[1]
        c = NetconsoleCapture(f"netconsole://127.0.0.1:{taken}", tmp_path, name="thinkpad-x1",
                              inventory="devices/thinkpad-x1.toml")
        with pytest.raises(LabFault) as exc:
            c.start()
    msg = str(exc.value)
    assert "thinkpad-x1" in msg and f"udp 127.0.0.1:{taken}" in msg and "already in use" in msg
    assert "devices/thinkpad-x1.toml" in msg and "port of its own" in msg
    assert not (tmp_path / "console.raw").exists(), "nothing opened when the port cannot be had"


def test_netconsole_is_receive_only(capture: NetconsoleCapture) -> None:
    with pytest.raises(Unavailable, match="only sends"):
        capture.write(b"root\n")
    assert capture.lab_fault() is None


def test_expect_and_mark_work_as_on_serial(capture: NetconsoleCapture, sender: Sender) -> None:
    sender.send_record(1, "rig-heartbeat abcd0123 1")
    capture.expect("rig-heartbeat", 5, since=0)
    mark = capture.mark()
    sender.send_record(2, "rig-lab: nc-1 ready")
    line = capture.expect(r"rig-lab: \S+ ready", 5, since=mark)
    assert isinstance(line, ConsoleLine) and line.number == mark + 1


def test_stream_never_raises_on_random_input() -> None:
    """Random datagrams, records and their fragments, shuffled (seeded: a failure can be replayed)."""
    rng = random.Random(14)
    for _ in range(300):
        grams: list[bytes] = []
        for _ in range(rng.randrange(30)):
            if rng.random() < 0.5:
                grams.append(rng.randbytes(rng.randrange(1200)))
            else:
                text = rng.randbytes(rng.randrange(2500))
                grams.extend(datagrams(record(rng.randrange(50), text, usec=rng.randrange(10**7))))
        rng.shuffle(grams)
        s = NetconsoleStream()
        for g in grams:
            assert isinstance(s.feed(g, 0.0), bytes)
        s.flush()
        assert s.lost >= 0 and s.datagrams == len(grams)


def test_seq_gap_text() -> None:
    assert SeqGap(after=4410, before=4422, at=0).text == "11 records lost between seq 4410 and 4422"
    assert SeqGap(after=1, before=3, at=0).text == "1 record lost between seq 1 and 3"


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("netconsole://0.0.0.0:6666", True),
        ("netconsole://127.0.0.1:6666", True),
        ("netconsole://controller.lab:6666", False),
        ("netconsole://0.0.0.0", False),
        ("ssh://kmsg", True),
        ("ssh://somewhere", False),
    ],
)
def test_inventory_accepts_netconsole_urls(url: str, ok: bool) -> None:
    if ok:
        assert ConsoleConfig(url=url).is_netconsole == url.startswith("netconsole:")
    else:
        with pytest.raises(ValueError, match="console url"):
            ConsoleConfig(url=url)


def test_inventory_netconsole_section_checks() -> None:
    cfg = ConsoleConfig.model_validate({"url": "netconsole://0.0.0.0:6666",
                                        "netconsole": {"configure": True, "remote_ip": "192.168.1.10",
                                                       "remote_mac": "52:55:0a:00:02:02"}})
    assert cfg.netconsole is not None and cfg.netconsole.configure
    with pytest.raises(ValueError, match="needs remote_ip"):
        ConsoleConfig.model_validate({"url": "netconsole://0.0.0.0:6666", "netconsole": {"configure": True}})
    with pytest.raises(ValueError, match="only for a netconsole"):
        ConsoleConfig.model_validate({"url": "rfc2217://h:1", "netconsole": {}})
    with pytest.raises(ValueError, match="remote_mac"):
        ConsoleConfig.model_validate({"url": "netconsole://0.0.0.0:1", "netconsole": {"remote_mac": "52:55"}})


def test_lab_command_line_for_a_netconsole_pstore_guest() -> None:
    """What a laptop's GRUB line would say, as the lab gives it to QEMU (no shell: the '$' stays as it is)."""
    from rig.lab.manager import lab_cmdline_extra

    assert lab_cmdline_extra("serial", None, False) == ()
    extra = lab_cmdline_extra("netconsole", 40001, True)
    assert extra[0] == "netconsole=+@/eth0,40001@10.0.2.2/52:55:0a:00:02:02"
    assert "memmap=1M$0x10000000" in extra and "ramoops.mem_address=0x10000000" in extra
    assert "ramoops.ecc=1" in extra and "printk.devkmsg=on" in extra and "ignore_loglevel" in extra


def test_a_second_name_prefix_gets_free_port_slots() -> None:
    """`rig lab up --name-prefix nc` beside running lab-1, lab-2 must not take their ports."""
    from rig.lab.manager import pick_slot

    assert pick_slot(1, None, set()) == 1
    assert pick_slot(1, None, {1, 2}) == 3
    assert pick_slot(2, None, {1, 2, 3}) == 4
    assert pick_slot(1, 5, {1, 2}) == 5, "a guest keeps the slot it had"
    assert pick_slot(1, 2, {1, 2}) == 3
