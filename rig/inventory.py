"""Device inventory: one TOML file per device, validated by a pydantic schema at load time.

Why a schema: a lab of twenty laptops is configured by hand-edited files, and a typo must fail
the moment the file is read -- naming the file and the field and saying what to do -- not twenty
minutes into a soak. A physical laptop and a virtual-lab laptop are described by the same schema;
the lab merely writes its files under ``devices/lab/``.

Relative paths in a file (key files, known_hosts, password files, QMP sockets, source trees) are
resolved against the directory of that file, so an inventory folder can be moved as a whole.

Secrets are never stored in an inventory: a password is named by ``password_env`` (an environment
variable) or ``password_file`` (a file holding only the password). A plain ``password`` field is
rejected with a message saying so.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from rig.errors import ConfigError, InventoryError
from rig.vocab import NmiSourceName

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
#: A kernel module parameter name (what insmod and the kernel's parser accept): it reaches a command line.
MODULE_PARAM_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: At most this many problems of one file are listed (a file of a million typos must not print 92 MB).
MAX_LISTED_PROBLEMS = 20


class _Strict(BaseModel):
    """Base of every inventory section: unknown keys are errors (they are usually typos)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(_Strict):
    """Where a password comes from. Exactly one of ``password_env`` / ``password_file``."""

    password_env: str | None = Field(
        default=None, description="Name of the environment variable that holds the password."
    )
    password_file: Path | None = Field(
        default=None, description="File whose whole content (stripped) is the password. Keep it 0600."
    )

    @model_validator(mode="before")
    @classmethod
    def _no_plain_password(cls, data: object) -> object:
        if isinstance(data, dict) and "password" in data:
            raise ValueError(
                "plain-text 'password' is not allowed in an inventory; "
                'use password_env = "VARIABLE" or password_file = "path" instead'
            )
        return data

    @model_validator(mode="after")
    def _one_source_of_secret(self) -> SecretRef:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError(
                "both password_env and password_file are given; keep one (which one is meant is not guessed)"
            )
        return self

    def has_secret(self) -> bool:
        return self.password_env is not None or self.password_file is not None

    def resolve_password(self, what: str) -> SecretStr:
        """Read the password now. Errors name the variable or file, never the value."""
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(
                    f"{what}: environment variable {self.password_env} is not set; export it before running the rig"
                )
            return SecretStr(value)
        if self.password_file is not None:
            pf = self.password_file
            try:
                mode = pf.stat().st_mode
                if mode & 0o077:
                    raise ConfigError(
                        f"{what}: password_file {pf} is readable by others than its owner (mode {mode & 0o777:04o}); "
                        f"run: chmod 600 {pf}"
                    )
                return SecretStr(pf.read_text().strip())
            except OSError as exc:
                raise ConfigError(f"{what}: cannot read password_file {pf}: {exc.strerror}") from None
        raise ConfigError(f"{what}: no password_env or password_file given")


class SshConfig(SecretRef):
    """How to reach the device's shell."""

    host: str
    port: int = Field(default=22, ge=1, le=65535)
    user: str = "root"
    key_file: Path | None = Field(default=None, description="Private key for public-key login.")
    host_key: str | None = Field(
        default=None,
        description="Pinned host key, as in known_hosts: 'ssh-ed25519 AAAA...'. "
        "Either this or known_hosts must be given.",
    )
    known_hosts: Path | None = Field(
        default=None, description="A known_hosts file owned by the rig (not ~/.ssh/known_hosts)."
    )
    sudo: bool = Field(default=False, description="Prefix privileged commands with 'sudo -n'.")
    connect_timeout: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _needs_host_key(self) -> SshConfig:
        if self.host_key is None and self.known_hosts is None:
            raise ValueError(
                'host keys are verified: give host_key = "ssh-ed25519 AAAA..." or known_hosts = "path/to/known_hosts"'
            )
        if self.key_file is None and not self.has_secret():
            raise ValueError("give key_file (preferred) or password_env/password_file for login")
        return self

    @field_validator("host_key")
    @classmethod
    def _host_key_shape(cls, v: str | None) -> str | None:
        if v is not None and len(v.split()) < 2:
            raise ValueError("host_key must look like 'ssh-ed25519 AAAA...' (type and base64 key)")
        return v


MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


class NetconsoleSetup(_Strict):
    """How the device's kernel sends its log to a ``netconsole://`` console.

    ``configure = false`` (default): the device sends already (a boot parameter such as
    ``netconsole=+@/eth0,6666@192.168.1.10/`` in GRUB, see docs/netconsole.md). ``configure = true``:
    the rig creates a dynamic target over SSH at open (configfs) and removes it at close.
    """

    configure: bool = Field(default=False, description="Set a dynamic target up over SSH at open.")
    remote_ip: str | None = Field(
        default=None, description="The controller's IPv4 address as the device reaches it (needed to configure)."
    )
    remote_port: int | None = Field(default=None, ge=1, le=65535, description="Default: the url's port.")
    remote_mac: str | None = Field(
        default=None,
        description="MAC of the controller or the gateway towards it; default: looked up on the device "
        "(ip neigh), else broadcast.",
    )
    dev_name: str | None = Field(default=None, description="Interface on the device; default: the route's.")
    local_ip: str | None = Field(default=None, description="Source address on the device; default: the interface's.")
    source: str | None = Field(
        default=None,
        description="Address the datagrams come from, as the controller sees it; default: the [ssh] host. "
        "'any' takes every source.",
    )

    @field_validator("remote_ip", "local_ip")
    @classmethod
    def _ipv4(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ipaddress.IPv4Address(v)
            except ValueError:
                raise ValueError(f"{v!r} is not an IPv4 address (netconsole sends IPv4 here)") from None
        return v

    @field_validator("remote_mac")
    @classmethod
    def _mac(cls, v: str | None) -> str | None:
        if v is not None and not MAC_RE.match(v):
            raise ValueError(f"remote_mac {v!r}: write it as 52:55:0a:00:02:02")
        return v

    @field_validator("dev_name")
    @classmethod
    def _ifname(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[A-Za-z0-9_.:-]{1,15}$", v):
            raise ValueError(f"dev_name {v!r} is not an interface name (e.g. eth0, enp0s31f6)")
        return v

    @model_validator(mode="after")
    def _configure_needs_ip(self) -> NetconsoleSetup:
        if self.configure and self.remote_ip is None:
            raise ValueError("configure = true needs remote_ip: the controller's address as the device reaches it")
        return self


class ConsoleConfig(_Strict):
    """The console: a local tty, ``rfc2217://host:port``, ``socket://host:port`` (serial),
    ``netconsole://listen-address:port`` (the kernel log over UDP, for laptops without a serial port) or
    ``ssh://kmsg`` (last resort: the kernel log followed over the [ssh] connection; dies with SSH).

    ``from_place = true`` instead of ``url``: the console is the ``NetworkSerialPort`` that the bench's
    labgrid exporter publishes for the ``[lab] place`` (host, port, speed, rfc2217 or raw), read when
    the place is acquired (rig.transports.coordinator.place_device). Why: one lab description then serves every
    controller, and the console server's address lives where the bench is wired, in its exporter.
    """

    url: str | None = Field(default=None, description="Where the console is; not with from_place.")
    baud: int = Field(default=115200, gt=0, description="Serial speed; with from_place the resource's speed.")
    netconsole: NetconsoleSetup | None = None
    from_place: bool = Field(
        default=False, description="Take the console from the [lab] place's NetworkSerialPort resource."
    )
    resource: str | None = Field(
        default=None,
        description="With from_place, when the place has several NetworkSerialPorts: the one's name "
        "(as labgrid-client -p PLACE show lists it).",
    )

    @field_validator("url")
    @classmethod
    def _url_shape(cls, v: str | None) -> str | None:
        if v is None or v.startswith("/dev/") or v == "ssh://kmsg":
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("rfc2217", "socket", "netconsole"):
            raise ValueError(
                f"console url {v!r}: use /dev/ttyXXX, rfc2217://host:port, socket://host:port, "
                "netconsole://0.0.0.0:port, or ssh://kmsg (last resort: the kernel log over SSH)"
            )
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise ValueError(f"console url {v!r}: needs a host and a port, e.g. rfc2217://10.0.0.5:7001")
        if parts.scheme == "netconsole":
            try:
                ipaddress.IPv4Address(parts.hostname)
            except ValueError:
                raise ValueError(
                    f"console url {v!r}: the netconsole host is the controller's address to listen on "
                    "(0.0.0.0 for all), not a name"
                ) from None
        return v

    @model_validator(mode="after")
    def _netconsole_section(self) -> ConsoleConfig:
        if self.from_place:
            if self.url is not None:
                raise ValueError("give url or from_place = true, not both (which one is meant is not guessed)")
            if "baud" in self.model_fields_set:
                raise ValueError("with from_place the speed is the place's NetworkSerialPort's (its 'speed'): "
                                 "remove baud, or set speed in the exporter's configuration")
        elif self.url is None:
            raise ValueError('give url = "rfc2217://host:port" (or a tty, socket://, netconsole://, ssh://kmsg), '
                             "or from_place = true to take the console from the [lab] place's NetworkSerialPort")
        elif self.resource is not None:
            raise ValueError("resource names a place's NetworkSerialPort: it needs from_place = true")
        if self.netconsole is not None and not self.is_netconsole:
            raise ValueError("[console.netconsole] is only for a netconsole:// url")
        return self

    @property
    def is_netconsole(self) -> bool:
        return self.url is not None and self.url.startswith("netconsole:")

    @property
    def where(self) -> str:
        """The url, or which place resource it will be (lists and reports show this before a run)."""
        if self.url is not None:
            return self.url
        return "place NetworkSerialPort" + (f" {self.resource}" if self.resource else "")


class IpmiPower(SecretRef):
    """Power (and NMI 'diag') through a BMC over IPMI 2.0 lanplus."""

    kind: Literal["ipmi"]
    host: str
    port: int = Field(default=623, ge=1, le=65535)
    user: str

    @model_validator(mode="after")
    def _needs_secret(self) -> IpmiPower:
        if not self.has_secret():
            raise ValueError("ipmi power needs password_env or password_file for the BMC password")
        return self


class QmpPower(_Strict):
    """Power through QEMU's QMP socket (virtual-lab devices)."""

    kind: Literal["qmp"]
    socket: Path


class ManualPower(_Strict):
    """No remote power: a person power-cycles the laptop. Recovery waits for them."""

    kind: Literal["manual"]
    instructions: str = "power-cycle the laptop by hand"


def labgrid_power_models() -> list[str]:
    """The PDU/plug/relay models labgrid offers here (``labgrid.driver.power.<model>``), sorted.

    Read from labgrid's installed file list, not by importing it: loading an inventory must stay
    cheap, and importing labgrid pulls in all of its drivers.
    """
    from importlib import metadata

    try:
        files = metadata.files("labgrid") or []
    except metadata.PackageNotFoundError:
        return []
    prefix = "labgrid/driver/power/"
    return sorted(
        f.name.removesuffix(".py")
        for f in files
        if str(f).startswith(prefix) and f.name.endswith(".py") and str(f).count("/") == 3
        and f.name != "__init__.py"
    )


def _check_model(model: str) -> str:
    known = labgrid_power_models()
    if not known:
        raise ValueError("labgrid is not installed (it provides the PDU back ends); run `make deps`")
    if model not in known:
        raise ValueError(f"unknown PDU model {model!r}; labgrid's power back ends are: {', '.join(known)}")
    return model


class PduPower(SecretRef):
    """A network PDU or smart plug outlet, switched through labgrid's back end for ``model``.

    Cutting AC power-cycles a laptop only with its battery out (or a BIOS set to power on when AC
    returns); with the battery in use a power-button relay (kind = "relay").
    """

    kind: Literal["pdu"]
    model: str | None = Field(
        default=None, description="labgrid.driver.power.<model>, e.g. 'apc', 'gude', 'netio', 'shelly_gen2'."
    )
    host: str | None = Field(
        default=None, description="The PDU's address as labgrid's back end takes it (a name, or a URL for rest ones)."
    )
    port: int | None = Field(
        default=None, ge=1, le=65535,
        description="Network port, if not the back end's default (SNMP models: the agent's UDP port).",
    )
    outlet: int | str | None = Field(
        default=None, description="Outlet (labgrid's 'index'), as the PDU numbers or names it."
    )
    from_place: bool = Field(
        default=False,
        description="model, host and outlet are the [lab] place's NetworkPowerPort (model, host, index), read "
        "when the place is acquired; user/password, timeout and cycle_pause stay here.",
    )
    resource: str | None = Field(
        default=None, description="With from_place, when the place has several NetworkPowerPorts: the one's name."
    )
    user: str | None = Field(default=None, description="For back ends whose host is an http(s) URL.")
    timeout: float = Field(default=10.0, gt=0, description="Deadline of each PDU call, seconds.")
    cycle_pause: float = Field(default=5.0, ge=0, description="Seconds off during a cycle (power supply drains).")

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str | None) -> str | None:
        return None if v is None else _check_model(v)

    @model_validator(mode="after")
    def _user_needs_secret(self) -> PduPower:
        given = [f for f in ("model", "host", "port", "outlet") if getattr(self, f) is not None]
        if self.from_place:
            if given:
                raise ValueError(f"with from_place the place's NetworkPowerPort gives model, host and outlet: remove "
                                 f"{', '.join(given)} (or from_place)")
        else:
            missing = [f for f in ("model", "host", "outlet") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"pdu power needs {', '.join(missing)} (or from_place = true to take the outlet from "
                                 "the [lab] place's NetworkPowerPort)")
            if self.resource is not None:
                raise ValueError("resource names a place's NetworkPowerPort: it needs from_place = true")
        if self.user is not None and not self.has_secret():
            raise ValueError("pdu power with a user needs password_env or password_file")
        if self.has_secret() and self.host is not None and not self.host.startswith(("http://", "https://")):
            raise ValueError("a PDU password can only be passed to back ends whose host is an http(s):// URL")
        return self


class RelayPower(_Strict):
    """A relay wired across the laptop's power-button pins: the one way that always works with a
    battery inside. off = hold ``force_off_seconds``, on = press ``press_seconds``.

    The contact is driven by ``driver``: "command" (``close``/``open`` argument lists, e.g. usbrelay)
    or "pdu" (a labgrid power back end whose output drives the relay: ``model``/``host``/``outlet``).
    A relay cannot read the power state: the rig infers it (SSH or console alive) and says so.
    """

    kind: Literal["relay"]
    driver: Literal["command", "pdu"]
    close: list[str] | None = Field(default=None, description="driver = command: argv that closes the contact.")
    open: list[str] | None = Field(default=None, description="driver = command: argv that opens the contact.")
    model: str | None = Field(default=None, description="driver = pdu: labgrid power model of the relay board.")
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    outlet: int | str | None = None
    force_off_seconds: float = Field(default=6.0, gt=0, description="Hold to force off (laptops need about 5 s).")
    press_seconds: float = Field(default=0.5, gt=0, description="Press to boot (about 0.3-1 s).")
    cycle_pause: float = Field(default=2.0, ge=0, description="Off for this long during a cycle.")
    timeout: float = Field(default=10.0, gt=0, description="Deadline of each contact command, seconds.")

    @model_validator(mode="after")
    def _driver_fields(self) -> RelayPower:
        if self.driver == "command":
            if not self.close or not self.open:
                raise ValueError('driver = "command" needs close = [...] and open = [...] (argument lists)')
            _check_templates(self.close, "close")
            _check_templates(self.open, "open")
        else:
            if self.model is None or self.host is None or self.outlet is None:
                raise ValueError('driver = "pdu" needs model, host and outlet')
            _check_model(self.model)
        if self.press_seconds >= self.force_off_seconds:
            raise ValueError("press_seconds must be shorter than force_off_seconds (a long press forces off)")
        return self


#: The ``{field}`` names an argument of a command back end may use (see rig.power.command).
COMMAND_FIELDS = ("device", "host", "ssh_host", "action")


def _check_templates(argv: list[str], what: str, extra: Sequence[str] = ()) -> None:
    """Each argument's ``{field}`` names must be known (a typo fails at load time, not at 3 a.m.)."""
    from string import Formatter

    allowed = set(COMMAND_FIELDS) | set(extra)
    for arg in argv:
        try:
            names = [f for _, f, _, _ in Formatter().parse(arg) if f is not None]
        except ValueError as exc:
            raise ValueError(f"{what}: argument {arg!r}: {exc} (write a literal brace as {{{{ or }}}})") from None
        for n in names:
            if n not in allowed:
                raise ValueError(f"{what}: unknown field {{{n}}} in {arg!r}; known: "
                                 + ", ".join("{" + a + "}" for a in sorted(allowed)))


class CommandPower(_Strict):
    """The site's own power commands (pdudaemon's pduclient, usbrelay, an AMT tool, a script).

    Each is an argument list, run without a shell; ``{device}``, ``{host}`` (the SSH host), ``{action}``
    and the names in ``fields`` are substituted per argument, so a value is always one argument.
    ``status`` must print "on" or "off". ``reset`` (optional) must restart without cutting power.
    """

    kind: Literal["command"]
    on: list[str] = Field(min_length=1)
    off: list[str] = Field(min_length=1)
    cycle: list[str] | None = Field(default=None, description="Default: off, cycle_pause, on.")
    reset: list[str] | None = Field(default=None, description="A warm reset (RAM kept), if the site has one.")
    status: list[str] | None = Field(default=None, description="Prints on/off; without it the state is unknown.")
    fields: dict[str, str] = Field(default_factory=dict, description="Extra {name} values, e.g. outlet = '4'.")
    timeout: float = Field(default=30.0, gt=0, description="Deadline of each command, seconds.")
    cycle_pause: float = Field(default=5.0, ge=0)

    @model_validator(mode="after")
    def _templates(self) -> CommandPower:
        for what in ("on", "off", "cycle", "reset", "status"):
            argv = getattr(self, what)
            if argv is not None:
                _check_templates(argv, what, tuple(self.fields))
        return self


class AmtPower(SecretRef):
    """Intel AMT (vPro) over WS-Management: HTTP digest on 16992, or TLS on 16993 (``tls = true``).

    Not exercised against a real AMT here: the rig's tests use a stand-in answering the documented
    messages (tests/test_power_amt.py).
    """

    kind: Literal["amt"]
    host: str
    port: int | None = Field(default=None, ge=1, le=65535, description="Default 16992, or 16993 with tls.")
    tls: bool = False
    ca_file: Path | None = Field(default=None, description="CA bundle for the AMT's TLS certificate.")
    user: str = "admin"
    timeout: float = Field(default=15.0, gt=0, description="Deadline of each WS-Management call, seconds.")

    @model_validator(mode="after")
    def _needs_secret(self) -> AmtPower:
        if not self.has_secret():
            raise ValueError("amt power needs password_env or password_file for the AMT password")
        return self


PowerConfig = Annotated[
    IpmiPower | QmpPower | ManualPower | PduPower | RelayPower | CommandPower | AmtPower,
    Field(discriminator="kind"),
]


class QmpConfig(_Strict):
    """A QEMU QMP socket, present on virtual-lab devices (NMI injection, power)."""

    socket: Path


class KernelExpectations(_Strict):
    """What the device's running kernel must look like for the suites to mean anything."""

    cmdline_requires: list[str] = Field(
        default_factory=list, description="Flags that must be on /proc/cmdline, e.g. 'intremap=off'."
    )
    version_prefix: str | None = Field(default=None, description="e.g. '6.1.' to pin a kernel series.")


class ShadowboxConfig(_Strict):
    """Which Shadow-box to deploy and how (recipes are data in rig.device.shadowbox)."""

    recipe: Literal["upstream", "gooroom", "gooroom-3.0", "sbsim"] = "upstream"
    source: Path | None = Field(default=None, description="Source tree on the controller.")
    build_on: Literal["device", "controller"] | None = Field(
        default=None, description="Where to build; default: the recipe's (device for Shadow-box, controller for sbsim)."
    )
    kernel_headers: Path | None = Field(
        default=None, description="Headers on the controller, when build_on = 'controller'."
    )
    module_params: dict[str, str | int] = Field(default_factory=dict)
    start_timeout: float = Field(default=120.0, gt=0)

    @field_validator("module_params")
    @classmethod
    def _param_names(cls, v: dict[str, str | int]) -> dict[str, str | int]:
        check_module_params(v)
        return v


def check_module_params(params: dict[str, str | int]) -> None:
    """Raise ValueError unless every key is a module parameter name (letters, digits, '_').

    Why: the names reach insmod's command line on the device, under sudo; a key such as
    ``x=1; touch /tmp/PWNED; #`` must be refused here, never quoted into a shell.
    """
    bad = [k for k in params if not MODULE_PARAM_RE.match(k)]
    if bad:
        raise ValueError(
            f"module parameter name(s) {', '.join(repr(k[:40]) for k in bad[:5])} are not names: use letters, "
            "digits and '_', starting with a letter or '_'"
        )


class MonitorConfig(_Strict):
    """Hang-monitor settings (every deadline is a named setting with a default)."""

    heartbeat_interval: float = Field(default=1.0, gt=0, description="H, seconds between heartbeats.")
    ssh_probe_interval: float = Field(default=2.0, gt=0)
    ssh_probe_timeout: float = Field(default=3.0, gt=0)
    crash_tail_seconds: float = Field(default=10.0, ge=0)
    boot_timeout: float = Field(default=180.0, gt=0, description="Power cycle to SSH ready.")
    reset_timeout: float = Field(
        default=120.0, gt=0,
        description="Warm reset to SSH ready, when recovering: past it the rig cuts the power instead.",
    )
    console_connect_timeout: float = Field(
        default=10.0, gt=0, description="How long a watched device's console server may take to accept us at start."
    )
    panic_on_stall: bool = Field(
        default=False,
        description="During soak tests, make soft/hard lockups, RCU stalls and hung tasks panic (sysctls), so a "
        "stall leaves a pstore record; restored after the soak.",
    )
    panic_reboot_seconds: int | None = Field(
        default=None, ge=0, description="With panic_on_stall: kernel.panic for the soak (reboot N s after a panic)."
    )

    @property
    def hang_bound(self) -> float:
        """The promise to users: a hang is declared within 3·H + 2 s of the last heartbeat (rig.device.monitor).

        One place computes it: the monitor's console grace, the suites' and bisect's waits all read it.
        """
        return 3 * self.heartbeat_interval + 2


class LabPlace(_Strict):
    """The device as a place of a labgrid coordinator shared by several controllers (rig.transports.coordinator).

    Without ``place`` the device is this controller's alone (the local lock only).
    """

    place: str | None = Field(default=None, description="labgrid place name, e.g. 'x1gen9-bench3'.")
    coordinator: str | None = Field(
        default=None, description="HOST:PORT of the labgrid coordinator; default: $LG_COORDINATOR."
    )
    place_wait: float = Field(
        default=0.0, ge=0, description="Seconds to wait (a reservation in the coordinator's queue) for a held place."
    )
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds to reach the coordinator.")

    @field_validator("place")
    @classmethod
    def _place_shape(cls, v: str | None) -> str | None:
        if v is not None and not NAME_RE.match(v):
            raise ValueError(f"place {v!r}: use letters, digits, '.', '_' or '-' (max 63), starting alnum")
        return v


class Device(_Strict):
    """One laptop (or virtual laptop) as the rig knows it."""

    name: str
    tags: list[str] = Field(default_factory=list)
    description: str = ""
    ssh: SshConfig
    console: ConsoleConfig | None = None
    power: PowerConfig = Field(default_factory=lambda: ManualPower(kind="manual"))
    qmp: QmpConfig | None = None
    nmi_sources: list[NmiSourceName] = Field(default_factory=lambda: list[NmiSourceName](["sysrq"]))
    kernel: KernelExpectations = Field(default_factory=KernelExpectations)
    shadowbox: ShadowboxConfig = Field(default_factory=ShadowboxConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    lab: LabPlace = Field(default_factory=LabPlace)
    #: Where the file came from (set by the loader, not written in the file).
    source_file: Path | None = Field(default=None, exclude=True)

    @field_validator("name")
    @classmethod
    def _name_shape(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"device name {v!r}: use letters, digits, '.', '_' or '-' (max 63), starting alnum")
        return v

    @model_validator(mode="after")
    def _sources_have_means(self) -> Device:
        if "ipmi" in self.nmi_sources and not isinstance(self.power, IpmiPower):
            raise ValueError("nmi_sources has 'ipmi' but [power] kind is not 'ipmi' (no BMC to ask)")
        if "qmp" in self.nmi_sources and self.qmp is None and not isinstance(self.power, QmpPower):
            raise ValueError("nmi_sources has 'qmp' but there is no [qmp] socket")
        if self.takes_place_resources and self.lab.place is None:
            which = " and ".join(w for w, on in (("[console]", self.console is not None and self.console.from_place),
                                                 ("[power]", isinstance(self.power, PduPower)
                                                  and self.power.from_place)) if on)  # fmt: skip
            raise ValueError(f"{which} from_place = true needs [lab] place = \"...\" (the labgrid place whose "
                             "exported resources they are)")
        return self

    @property
    def takes_place_resources(self) -> bool:
        """Whether the console or the power outlet come from the [lab] place's exported resources."""
        return (self.console is not None and self.console.from_place) or (
            isinstance(self.power, PduPower) and self.power.from_place
        )

    def qmp_socket(self) -> Path | None:
        """The QMP socket of a virtual-lab device, from [qmp] or a qmp power section."""
        if self.qmp is not None:
            return self.qmp.socket
        if isinstance(self.power, QmpPower):
            return self.power.socket
        return None


_PATH_FIELDS: dict[str, tuple[str, ...]] = {
    "ssh": ("key_file", "known_hosts", "password_file"),
    "power": ("password_file", "socket", "ca_file"),
    "qmp": ("socket",),
    "shadowbox": ("source", "kernel_headers"),
}


def _resolve_paths(data: dict[str, object], base: Path) -> None:
    """Make relative paths in the raw TOML data relative to the file's directory."""
    for section, fields in _PATH_FIELDS.items():
        sub = data.get(section)
        if not isinstance(sub, dict):
            continue
        for f in fields:
            v = sub.get(f)
            if isinstance(v, str) and v:
                p = Path(v).expanduser()
                sub[f] = str(p if p.is_absolute() else (base / p))


def _format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid device inventory ({exc.error_count()} problem(s)):"]
    errors = exc.errors()
    for err in errors[:MAX_LISTED_PROBLEMS]:
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        # Discriminated unions add the tag to the location ("power.ipmi.user"): keep it, it helps.
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (typo?); remove it or check the spelling against devices/examples/"
        elif err["type"] == "missing":
            msg = "required field is missing"
        # Never echo the offending input: it may be a secret.
        lines.append(f"  - {loc[:200] or '<file>'}: {msg}")
    if len(errors) > MAX_LISTED_PROBLEMS:
        lines.append(f"  ... and {len(errors) - MAX_LISTED_PROBLEMS} more")
    return "\n".join(lines)


def load_device(path: str | os.PathLike[str]) -> Device:
    """Load and validate one inventory file. Raises InventoryError naming file and field."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InventoryError(f"{p}: cannot read inventory file: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8-sig"))  # a BOM (Windows editors) is not part of the TOML
    except UnicodeDecodeError:
        raise InventoryError(f"{p}: not UTF-8 text; save the file as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"{p}: not valid TOML: {exc}") from None
    _resolve_paths(data, p.resolve().parent)
    try:
        dev = Device.model_validate(data)
    except ValidationError as exc:
        raise InventoryError(_format_validation_error(p, exc)) from None
    return dev.model_copy(update={"source_file": p.resolve()})


def device_toml(dev: Device, comments: Sequence[str] = ()) -> str:
    """The inventory file of ``dev``: serialised from the schema (fields at their default left out), never
    templated, so a file the rig writes (the lab's, the demo's) is always one :func:`load_device` accepts.

    ``comments`` become ``# ...`` lines at the top (the values themselves never pass through text edits).
    """
    import tomli_w

    head = "".join(f"# {c}\n" for line in comments for c in line.splitlines() or [""])
    return head + tomli_w.dumps(dev.model_dump(mode="json", exclude_none=True, exclude_defaults=True))


def inventory_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand folders (recursively, ``*.toml``) and files into a sorted list of inventory files."""
    out: list[Path] = []
    for item in paths:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*.toml") if q.is_file()))
        elif p.is_file():
            out.append(p)
        else:
            raise InventoryError(f"{p}: no such inventory file or folder")
    return out


def load_inventory(
    paths: Sequence[str | os.PathLike[str]],
    *,
    names: Sequence[str] = (),
    tags: Sequence[str] = (),
) -> list[Device]:
    """Load every device under ``paths``; optionally keep only the given names and/or tags.

    Duplicate names are an error (two files must never drive one laptop). Selecting a name that
    does not exist is an error that lists the known names.
    """
    devices: list[Device] = []
    seen: dict[str, Path] = {}
    for f in inventory_files(paths):
        dev = load_device(f)
        if dev.name in seen:
            raise InventoryError(
                f"{f}: device name {dev.name!r} is already used by {seen[dev.name]}; names must be unique"
            )
        seen[dev.name] = f
        devices.append(dev)
    if names:
        unknown = [n for n in names if n not in seen]
        if unknown:
            raise InventoryError(f"unknown device(s) {', '.join(unknown)}; known: {', '.join(sorted(seen)) or 'none'}")
        devices = [d for d in devices if d.name in names]
    if tags:
        devices = [d for d in devices if set(tags) & set(d.tags)]
    return devices
