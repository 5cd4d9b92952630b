"""Issue 17's findings that need no lab: each test fails on a66d3c1 and passes now.

Real peers where a peer matters: OpenSSH's sshd (tests/sshpeers.py) for host keys and logins, a real
UDP port with no BMC behind it for "BMC unreachable", real git for tracked files, click's runner for
the CLI. VT-x, a PMU and Intel AMT are not exercised here (no real peer can exist on this machine).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from rig.cli import main
from rig.device.monitor import HangMonitor
from rig.device.shadowbox import RECIPES, Deployer, DeployFailed
from rig.errors import ConfigError, InventoryError, LabFault
from rig.inventory import MonitorConfig, load_device
from rig.transports.bmc import BmcClient
from rig.transports.ssh import SshClient
from rig.vocab import VerdictKind
from tests.helpers import free_udp_port
from tests.sshpeers import SshPeer, free_port, ssh_keygen

EVIL_KEY = "x=1; touch /tmp/PWNED; #"


def rig(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return res.exit_code, res.output


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshPeer]:
    p = SshPeer("sshd", tmp_path)
    p.start()
    try:
        yield p
    finally:
        p.stop()


def device_file(folder: Path, name: str, ssh: str, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f"{name}.toml"
    p.write_text(f'name = "{name}"\n{extra}\n[ssh]\n{ssh}\n')
    return p


# -- item 1: module_params keys reach a command line ------------------------------------------


def test_module_param_key_that_is_not_a_name_is_refused_in_the_inventory(tmp_path: Path) -> None:
    p = tmp_path / "a.toml"
    p.write_text(
        'name = "a"\n[ssh]\nhost = "h"\nkey_file = "k"\nknown_hosts = "kh"\n'
        f'[shadowbox]\nrecipe = "sbsim"\nmodule_params = {{ "{EVIL_KEY}" = 1, ok_name = 2 }}\n'
    )
    with pytest.raises(InventoryError) as ei:
        load_device(p)
    assert "shadowbox.module_params" in str(ei.value) and "not names" in str(ei.value)


def test_module_param_key_override_is_refused_and_insmod_gets_an_argument_list(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="module_params"):
        Deployer(None, None, RECIPES["sbsim"], tmp_path, device="d", module_params={EVIL_KEY: 1})  # type: ignore[arg-type]
    from rig.device.shadowbox import insmod_argv  # (new in issue 17: imported here so the other tests run on a66d3c1)

    argv = insmod_argv("/tmp/rig-shadowbox.abc/sbsim.ko", {"version": "a b;$(x)", "hang_after_nmi": 5})
    assert argv == ["insmod", "/tmp/rig-shadowbox.abc/sbsim.ko", "version=a b;$(x)", "hang_after_nmi=5"]


# -- item 2: a passphrase-protected key_file ----------------------------------------------------


def test_encrypted_key_file_is_named_before_connecting_not_a_type_error(tmp_path: Path) -> None:
    key = tmp_path / "enc"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(key)], check=True)
    (tmp_path / "kh").write_text("")
    port = free_port()  # nothing listens: the key is judged before any network
    ssh = f'host = "127.0.0.1"\nport = {port}\nkey_file = "{key}"\nknown_hosts = "{tmp_path / "kh"}"'
    device_file(tmp_path / "inv", "enc", ssh)
    code, out = rig("--devices", str(tmp_path / "inv"), "--report-dir", str(tmp_path / "r"), "check")
    text = " ".join(out.split())
    assert code == 1
    assert f"ssh.key_file {key} is encrypted (has a passphrase)" in text and "ssh-keygen -t ed25519 -N ''" in text
    assert "SshUnreachable" not in text  # reported for what it is, not as the network


# -- item 3: the monitor's probe meets a changed host key / a refused login --------------------


@pytest.mark.parametrize("fault", ["changed-host-key", "refused-login"])
def test_probe_that_meets_a_lab_fault_is_a_lab_fault_verdict_not_a_hang(
    sshd: SshPeer, tmp_path: Path, fault: str
) -> None:
    if fault == "changed-host-key":
        other = " ".join(ssh_keygen(tmp_path / "other_host").split()[:2])
        kh = tmp_path / "kh_changed"
        kh.write_text(f"[127.0.0.1]:{sshd.port} {other}\n")
        cfg = sshd.config(known_hosts=kh)
        words = "CHANGED"
    else:
        stranger = tmp_path / "stranger"
        ssh_keygen(stranger)
        cfg = sshd.config(key_file=stranger)
        words = "was refused"
    ssh = SshClient(cfg, device="lap-1")
    try:
        mon = HangMonitor("lap-1", ssh, None, MonitorConfig())
        p = mon.rule.probe_started("silence", time.monotonic(), 5.0)
        mon._probe(p)  # what the watcher thread runs when the heartbeat is late
        v = mon.verdict()
    finally:
        ssh.close()
    assert v.kind is VerdictKind.LAB_FAULT, v
    assert words in v.reason and "lap-1" in v.reason


# -- item 4: the BMC timeout message states the time really waited ------------------------------


def test_bmc_unreachable_message_states_the_time_really_waited() -> None:
    port = free_udp_port()  # nothing listens: pyghmi gives up on its own, before our 10 s deadline
    c = BmcClient("127.0.0.1", port, "admin", SecretStr("pw-123456"), timeout=10.0, name="lap-1")
    t0 = time.monotonic()
    with pytest.raises(LabFault) as ei:
        c.power_state()
    waited = time.monotonic() - t0
    msg = str(ei.value)
    m = re.search(r"after (\d+\.\d) s", msg)
    if waited >= 9.9:
        assert "within 10s" in msg
    else:
        assert m is not None and "within 10s" not in msg, msg
        # the real wait, not the nominal 10 s (pyghmi gives up after about 5): a starved run adds seconds
        assert abs(float(m.group(1)) - waited) < 3.0, (msg, waited)


# -- item 8: no secret in traceback frames (pytest -l, JUnit set-up errors) ----------------------


FRAME_SECRET = "Frame-Secret-8812"  # a global, so this test's own frame does not hold it


def test_bmc_password_is_in_no_traceback_frame_local() -> None:
    c = BmcClient("127.0.0.1", free_udp_port(), "admin", SecretStr(FRAME_SECRET), timeout=1.0, name="lap-1")
    with pytest.raises(LabFault) as ei:
        c.power_state()
    # what pytest -l and the traceback module print with locals
    text = "".join(traceback.TracebackException.from_exception(ei.value, capture_locals=True).format())
    assert "_session" in text  # the frame that logs in is in the traceback ...
    assert FRAME_SECRET not in text  # ... without the password among its locals
    assert FRAME_SECRET not in repr(c)


# -- item 6: rich markup in inventory values and messages ---------------------------------------


def test_tags_with_rich_markup_print_as_text_in_rig_devices(tmp_path: Path) -> None:
    device_file(tmp_path, "m", 'host = "h"\nkey_file = "k"\nknown_hosts = "kh"', 'tags = ["[/x]"]')
    code, out = rig("--devices", str(tmp_path), "devices")  # a66d3c1: rich.errors.MarkupError
    assert code == 0, out
    assert "[/x]" in out


def test_rig_check_keeps_the_known_hosts_name_in_brackets(sshd: SshPeer, tmp_path: Path) -> None:
    kh = tmp_path / "empty_known_hosts"
    kh.write_text("")
    device_file(tmp_path / "inv", "hk", f'host = "127.0.0.1"\nport = {sshd.port}\nkey_file = "{sshd.client_key}"\n'
                f'known_hosts = "{kh}"')  # fmt: skip
    code, out = rig("--devices", str(tmp_path / "inv"), "--report-dir", str(tmp_path / "r"), "check")
    text = "".join(out.split())  # rich wraps long lines
    assert code == 1
    assert f"hostkeyfor[127.0.0.1]:{sshd.port}isnotknown" in text, out


# -- items 13 and 15: inventory input, and one check showing every problem ----------------------


def test_inventory_with_both_password_sources_is_refused(tmp_path: Path) -> None:
    p = device_file(tmp_path, "b", 'host = "h"\nknown_hosts = "kh"\npassword_env = "X"\npassword_file = "pw"')
    with pytest.raises(InventoryError, match="both password_env and password_file"):
        load_device(p)


def test_group_readable_password_file_is_refused_naming_chmod(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    pw.chmod(0o640)
    p = device_file(tmp_path, "g", 'host = "h"\nknown_hosts = "kh"\npassword_file = "pw"')
    dev = load_device(p)
    with pytest.raises(ConfigError, match=rf"mode 0640\); run: chmod 600 {pw}") as ei:
        dev.ssh.resolve_password("ssh")
    assert "s3cret" not in str(ei.value)
    pw.chmod(0o600)
    assert dev.ssh.resolve_password("ssh").get_secret_value() == "s3cret"


def test_inventory_with_a_utf8_bom_loads(tmp_path: Path) -> None:
    p = tmp_path / "bom.toml"
    p.write_bytes(b"\xef\xbb\xbf" + b'name = "bom"\n[ssh]\nhost = "h"\nkey_file = "k"\nknown_hosts = "kh"\n')
    assert load_device(p).name == "bom"


def test_inventory_with_100000_unknown_keys_lists_twenty_and_counts_the_rest(tmp_path: Path) -> None:
    p = tmp_path / "many.toml"
    junk = "".join(f"k{i} = 1\n" for i in range(100_000))
    p.write_text('name = "many"\n' + junk + '[ssh]\nhost = "h"\nkey_file = "k"\nknown_hosts = "kh"\n')
    with pytest.raises(InventoryError) as ei:
        load_device(p)
    msg = str(ei.value)
    assert msg.count("unknown key") == 20 and "... and 99980 more" in msg
    assert len(msg) < 5000


def test_rig_check_shows_every_problem_at_once_and_bmc_errors_under_power(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RIG_T17_NO_SUCH_VAR", raising=False)
    (tmp_path / "kh").write_text("")
    device_file(
        tmp_path / "inv", "two",
        f'host = "127.0.0.1"\nport = {free_port()}\nkey_file = "missing_key"\nknown_hosts = "../kh"\n'
        '[power]\nkind = "ipmi"\nhost = "127.0.0.1"\nuser = "admin"\npassword_env = "RIG_T17_NO_SUCH_VAR"',
    )  # fmt: skip
    code, out = rig("--devices", str(tmp_path / "inv"), "--report-dir", str(tmp_path / "r"), "check")
    text = " ".join(out.split())
    assert code == 1
    assert "two ssh: FAIL ConfigError: device two: ssh.key_file" in text and "does not exist" in text
    assert "two power: FAIL ConfigError: device two [power]: environment variable RIG_T17_NO_SUCH_VAR" in text
    assert "RIG_T17_NO_SUCH_VAR" not in text.split("two power:")[0]  # the BMC's problem is not under ssh


# -- item 9: what a deploy takes from a tree, and the build copies it leaves --------------------


def test_deploy_takes_tracked_files_only_and_leaves_no_build_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "sb"
    tree.mkdir()
    (tree / "Makefile").write_text("modules:\n\t@echo 'shadow_box.c:1: error: nope' >&2; exit 2\n")
    (tree / "src").mkdir()
    (tree / "src" / "a.c").write_text("int a;\n")
    git = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    (tree / "notes-with-secrets.txt").write_text("untracked\n")
    from rig.device.shadowbox import stage_tree, tree_files  # (new in issue 17)

    assert tree_files(tree) == [Path("Makefile"), Path("src/a.c")]
    staged = stage_tree(tree, tmp_path / "staged")
    assert sorted(str(p.relative_to(staged)) for p in staged.rglob("*")) == ["Makefile", "src", "src/a.c"]
    # build copies on the controller go away, failed build included
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    headers = tmp_path / "headers"
    headers.mkdir()
    d = Deployer(None, None, RECIPES["sbsim"], tree, device="t", kernel_headers=headers)  # type: ignore[arg-type]
    d.recipe = type(d.recipe)(**{**d.recipe.__dict__, "build": "make modules"})
    with pytest.raises(DeployFailed):
        d.build_on_controller("6.1.0-test")
    assert list(tmp.iterdir()) == []


def test_a_uname_that_is_not_a_kernel_release_is_not_used_as_a_path(tmp_path: Path) -> None:
    d = Deployer(None, None, RECIPES["sbsim"], tmp_path, device="t")  # type: ignore[arg-type]
    with pytest.raises(Exception, match="not a kernel release name") as ei:
        d.build_on_controller("../../../../tmp/evil")
    assert not isinstance(ei.value, DeployFailed)


# -- item 12: names from the environment, the device and the command line used as paths -------


@pytest.mark.parametrize("run_id", ["../escaped", "/tmp/rig-t17-absolute"])
def test_rig_run_id_that_is_a_path_is_a_usage_error_and_writes_nothing_outside(tmp_path: Path, run_id: str) -> None:
    import os
    import sys

    inv = tmp_path / "devices"
    device_file(inv, "a", f'host = "192.0.2.1"\nknown_hosts = "{inv / "kh"}"\nkey_file = "{inv / "key"}"')
    (tmp_path / "test_suite.py").write_text("def test_x(device, rig_run):\n    rig_run.device(device)\n")
    reports = tmp_path / "box" / "reports"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(tmp_path / "test_suite.py"), "--rig-devices", str(inv),
         "--rig-report-dir", str(reports), "-p", "no:cacheprovider", "-p", "no:xdist", "-q"],
        cwd=tmp_path, env={**os.environ, "RIG_RUN_ID": run_id}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out  # pytest's usage error
    assert f"RIG_RUN_ID={run_id!r} is not a run id" in out
    assert not (tmp_path / "box" / "escaped").exists() and not Path("/tmp/rig-t17-absolute").exists()


def test_lab_name_prefix_that_is_not_a_name_is_refused(tmp_path: Path) -> None:
    from rig.lab.manager import Lab

    lab = Lab(root=tmp_path / "state", inventory_dir=tmp_path / "devices")
    for bad in ("../x", "a,b=c", "x\ny: z"):
        with pytest.raises(ConfigError, match="--name-prefix"):
            lab.up(count=1, name_prefix=bad)
    assert not (tmp_path / "devices").exists() or not any((tmp_path / "devices").iterdir())
