"""Inventory loading: good files load, bad files fail at load time naming the file and the field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from rig.errors import ConfigError, InventoryError
from rig.inventory import IpmiPower, ManualPower, load_device, load_inventory

EXAMPLES = Path(__file__).resolve().parent.parent / "devices" / "examples"

MINIMAL = """
name = "{name}"
tags = {tags}
[ssh]
host = "127.0.0.1"
key_file = "keys/id"
known_hosts = "keys/known_hosts"
"""


def write(tmp_path: Path, text: str, name: str = "dev.toml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.example")), ids=lambda p: p.name)
def test_shipped_examples_load(example: Path) -> None:
    dev = load_device(example)
    assert dev.name == example.name.removesuffix(".toml.example")
    assert dev.ssh.key_file is not None and dev.ssh.key_file.is_absolute()
    assert dev.nmi_sources


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    dev = load_device(write(tmp_path, MINIMAL.format(name="a", tags="[]")))
    assert dev.ssh.key_file == tmp_path / "keys" / "id"
    assert dev.source_file == (tmp_path / "dev.toml").resolve()
    assert isinstance(dev.power, ManualPower)


def test_unknown_key_names_file_and_field(tmp_path: Path) -> None:
    p = write(tmp_path, MINIMAL.format(name="a", tags="[]") + 'hostt = "x"\n')
    with pytest.raises(InventoryError) as exc:
        load_device(p)
    msg = str(exc.value)
    assert str(p) in msg and "ssh.hostt" in msg and "unknown key" in msg


def test_missing_field_is_named(tmp_path: Path) -> None:
    p = write(tmp_path, 'name = "a"\n[ssh]\nkey_file = "k"\nknown_hosts = "kh"\n')
    with pytest.raises(InventoryError, match=r"ssh\.host: required field is missing"):
        load_device(p)


def test_bad_console_url(tmp_path: Path) -> None:
    p = write(tmp_path, MINIMAL.format(name="a", tags="[]") + '[console]\nurl = "telnet://x:1"\n')
    with pytest.raises(InventoryError, match=r"console\.url: .*rfc2217://"):
        load_device(p)
    p = write(tmp_path, MINIMAL.format(name="a", tags="[]") + '[console]\nurl = "rfc2217://host"\n')
    with pytest.raises(InventoryError, match=r"needs a host and a port"):
        load_device(p)


def test_plain_password_is_refused_and_not_echoed(tmp_path: Path) -> None:
    secret = "hunter2-do-not-print"
    p = write(
        tmp_path,
        MINIMAL.format(name="a", tags="[]")
        + f'[power]\nkind = "ipmi"\nhost = "bmc"\nuser = "admin"\npassword = "{secret}"\n',
    )
    with pytest.raises(InventoryError) as exc:
        load_device(p)
    assert "password_env" in str(exc.value) and "power" in str(exc.value)
    assert secret not in str(exc.value)


def test_host_key_is_required(tmp_path: Path) -> None:
    p = write(tmp_path, 'name = "a"\n[ssh]\nhost = "h"\nkey_file = "k"\n')
    with pytest.raises(InventoryError, match="host keys are verified"):
        load_device(p)


def test_ipmi_source_needs_a_bmc(tmp_path: Path) -> None:
    p = write(tmp_path, 'nmi_sources = ["ipmi"]\n' + MINIMAL.format(name="a", tags="[]"))
    with pytest.raises(InventoryError, match="nmi_sources has 'ipmi'"):
        load_device(p)


def test_unknown_nmi_source(tmp_path: Path) -> None:
    p = write(tmp_path, 'nmi_sources = ["laser"]\n' + MINIMAL.format(name="a", tags="[]"))
    with pytest.raises(InventoryError, match="nmi_sources"):
        load_device(p)


def test_bad_toml_and_bad_name(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="not valid TOML"):
        load_device(write(tmp_path, "name = \n"))
    with pytest.raises(InventoryError, match="device name"):
        load_device(write(tmp_path, MINIMAL.format(name="a b;rm -rf /", tags="[]")))


def test_password_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "pw").chmod(0o600)
    body = MINIMAL.format(name="a", tags="[]") + '[power]\nkind = "ipmi"\nhost = "b"\nuser = "u"\n'
    dev = load_device(write(tmp_path, body + 'password_file = "pw"\n'))
    assert isinstance(dev.power, IpmiPower)
    assert dev.power.resolve_password("bmc").get_secret_value() == "s3cret"

    dev = load_device(write(tmp_path, body + 'password_env = "RIG_TEST_PW"\n'))
    assert isinstance(dev.power, IpmiPower)
    monkeypatch.delenv("RIG_TEST_PW", raising=False)
    with pytest.raises(ConfigError, match="RIG_TEST_PW is not set"):
        dev.power.resolve_password("bmc")
    monkeypatch.setenv("RIG_TEST_PW", "from-env")
    pw = dev.power.resolve_password("bmc")
    assert pw.get_secret_value() == "from-env" and "from-env" not in repr(pw)


def test_load_inventory_selects_and_rejects_duplicates(tmp_path: Path) -> None:
    write(tmp_path, MINIMAL.format(name="a", tags='["x"]'), "a.toml")
    write(tmp_path, MINIMAL.format(name="b", tags='["y"]'), "b.toml")
    (tmp_path / "ignored.toml.example").write_text("garbage")
    assert [d.name for d in load_inventory([tmp_path])] == ["a", "b"]
    assert [d.name for d in load_inventory([tmp_path], tags=["y"])] == ["b"]
    assert [d.name for d in load_inventory([tmp_path], names=["a"])] == ["a"]
    with pytest.raises(InventoryError, match="unknown device.*zz.*known: a, b"):
        load_inventory([tmp_path], names=["zz"])
    write(tmp_path, MINIMAL.format(name="a", tags="[]"), "c.toml")
    with pytest.raises(InventoryError, match="already used by"):
        load_inventory([tmp_path])
    with pytest.raises(InventoryError, match="no such inventory"):
        load_inventory([tmp_path / "nope"])
