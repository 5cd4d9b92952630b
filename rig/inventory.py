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
            try:
                return SecretStr(self.password_file.read_text().strip())
            except OSError as exc:
                raise ConfigError(f"{what}: cannot read password_file {self.password_file}: {exc.strerror}") from None
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


class ConsoleConfig(_Strict):
    """The serial console: a local tty, ``rfc2217://host:port`` or ``socket://host:port``."""

    url: str
    baud: int = Field(default=115200, gt=0)

    @field_validator("url")
    @classmethod
    def _url_shape(cls, v: str) -> str:
        if v.startswith("/dev/"):
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("rfc2217", "socket"):
            raise ValueError(f"console url {v!r}: use /dev/ttyXXX, rfc2217://host:port or socket://host:port")
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise ValueError(f"console url {v!r}: needs a host and a port, e.g. rfc2217://10.0.0.5:7001")
        return v


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


PowerConfig = Annotated[IpmiPower | QmpPower | ManualPower, Field(discriminator="kind")]


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
    """Which Shadow-box to deploy and how (recipes are data in rig.shadowbox)."""

    recipe: Literal["upstream", "gooroom", "sbsim"] = "upstream"
    source: Path | None = Field(default=None, description="Source tree on the controller.")
    build_on: Literal["device", "controller"] | None = Field(
        default=None, description="Where to build; default: the recipe's (device for Shadow-box, controller for sbsim)."
    )
    kernel_headers: Path | None = Field(
        default=None, description="Headers on the controller, when build_on = 'controller'."
    )
    module_params: dict[str, str | int] = Field(default_factory=dict)
    start_timeout: float = Field(default=120.0, gt=0)


class MonitorConfig(_Strict):
    """Hang-monitor settings (every deadline is a named setting with a default)."""

    heartbeat_interval: float = Field(default=1.0, gt=0, description="H, seconds between heartbeats.")
    ssh_probe_interval: float = Field(default=2.0, gt=0)
    ssh_probe_timeout: float = Field(default=3.0, gt=0)
    crash_tail_seconds: float = Field(default=10.0, ge=0)
    boot_timeout: float = Field(default=180.0, gt=0, description="Power cycle to SSH ready.")
    console_connect_timeout: float = Field(
        default=10.0, gt=0, description="How long a watched device's console server may take to accept us at start."
    )

    @property
    def hang_bound(self) -> float:
        """The promise to users: a hang is declared within 3·H + 2 s of the last heartbeat (rig.monitor).

        One place computes it: the monitor's console grace, the suites' and bisect's waits all read it.
        """
        return 3 * self.heartbeat_interval + 2


class LabPlace(_Strict):
    """The device as a place of a labgrid coordinator shared by several controllers (rig.coordinator).

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
        return self

    def qmp_socket(self) -> Path | None:
        """The QMP socket of a virtual-lab device, from [qmp] or a qmp power section."""
        if self.qmp is not None:
            return self.qmp.socket
        if isinstance(self.power, QmpPower):
            return self.power.socket
        return None


_PATH_FIELDS: dict[str, tuple[str, ...]] = {
    "ssh": ("key_file", "known_hosts", "password_file"),
    "power": ("password_file", "socket"),
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
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        # Discriminated unions add the tag to the location ("power.ipmi.user"): keep it, it helps.
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (typo?); remove it or check the spelling against devices/examples/"
        elif err["type"] == "missing":
            msg = "required field is missing"
        # Never echo the offending input: it may be a secret.
        lines.append(f"  - {loc or '<file>'}: {msg}")
    return "\n".join(lines)


def load_device(path: str | os.PathLike[str]) -> Device:
    """Load and validate one inventory file. Raises InventoryError naming file and field."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InventoryError(f"{p}: cannot read inventory file: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
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
