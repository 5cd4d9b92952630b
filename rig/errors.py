"""The rig's exception hierarchy.

Why a hierarchy: the one question every caller asks of a failure is *whose fault is it* --
the device under test, the lab (console server, BMC, network, credentials), or the user's input.
Reports and verdicts depend on that answer, so it is carried by the exception type, never
guessed from a message.

No exception message may contain a secret (BMC or SSH password). Inventories hold only references
to secrets (password_env, password_file) and the transports never put a value they read into a
message, so a message built from inventory data carries none.
"""

from __future__ import annotations


class RigError(Exception):
    """Base class of every error the rig raises on purpose."""


class ConfigError(RigError):
    """Bad input from the user: an inventory file, a setting, a command-line value."""


class InventoryError(ConfigError):
    """An inventory file is invalid. The message names the file and the field and says what to do."""


class LabFault(RigError):
    """The lab failed, not the device: console server down, BMC unreachable, wrong password, ...

    Never reported as a failure of the device under test.
    """

    def __init__(self, message: str, *, component: str = "lab") -> None:
        super().__init__(message)
        self.component = component


class DeviceError(RigError):
    """The device under test did something wrong (or stopped answering)."""


class CommandTimeout(DeviceError):
    """A command on the device did not finish within its deadline."""


class Unavailable(RigError):
    """A capability (an NMI source, perf, VT-x, a BMC) that this device cannot offer, with the reason."""

    def __init__(self, capability: str, reason: str) -> None:
        super().__init__(f"{capability} unavailable: {reason}")
        self.capability = capability
        self.reason = reason
