"""What a device is, read once per boot: kernel, command line, CPU, microcode, VT-x, loaded modules.

Why one reader: the report's identity, the plugin's ``vmx`` capability, the junit ``rig_kernel``
property and ``rig check`` each ran their own shell snippet for the same facts (six snippets, one
SSH round trip each). :class:`rig.device.dut.Dut` reads them with :func:`read_facts` after each boot and
keeps them until the next one (:meth:`rig.device.dut.Dut.facts`).

``modules`` is the list at the time of reading (after the boot): whether Shadow-box is loaded *now*
is asked live before a deploy (:meth:`rig.device.dut.Dut.runs_shadowbox`), since a test may insmod by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

from rig.protocols import CommandRunner

#: One command, POSIX sh and busybox alike; ``key=value`` lines, so a missing fact is an empty value.
FACTS_SCRIPT = (
    'echo "kernel=$(uname -r)"; echo "cmdline=$(cat /proc/cmdline)"; '
    "echo \"cpu_model=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2)\"; "
    "echo \"microcode=$(grep -m1 '^microcode' /proc/cpuinfo | cut -d: -f2)\"; "
    'echo "cpus=$(grep -c ^processor /proc/cpuinfo)"; '
    'if grep -qw vmx /proc/cpuinfo; then echo vmx=yes; else echo vmx=no; fi; '
    "echo \"modules=$(cut -d' ' -f1 /proc/modules | tr '\\n' ' ')\""
)


@dataclass(frozen=True)
class DeviceFacts:
    kernel: str = ""
    cmdline: str = ""
    cpu_model: str = ""
    microcode: str = ""
    #: As the device counted them (a string, as report.json has always kept it).
    cpus: str = ""
    vmx: bool = False
    modules: tuple[str, ...] = ()

    def identity(self) -> dict[str, str]:
        """report.json's ``identity`` (its five keys, unchanged)."""
        return {"kernel": self.kernel, "cmdline": self.cmdline, "cpu_model": self.cpu_model,
                "microcode": self.microcode, "cpus": self.cpus}  # fmt: skip


def parse_facts(out: str) -> DeviceFacts:
    """The script's output -> facts (pure); unknown or missing lines are left empty, never an error."""
    kv: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in DeviceFacts.__dataclass_fields__ and key not in kv:
            kv[key] = value.strip()
    return DeviceFacts(
        kernel=kv.get("kernel", ""),
        cmdline=kv.get("cmdline", ""),
        cpu_model=kv.get("cpu_model", ""),
        microcode=kv.get("microcode", ""),
        cpus=kv.get("cpus", ""),
        vmx=kv.get("vmx") == "yes",
        modules=tuple(kv.get("modules", "").split()),
    )


def read_facts(ssh: CommandRunner, timeout: float = 15) -> DeviceFacts:
    """Ask the device (one SSH command); a device that does not answer raises the transport's RigError."""
    return parse_facts(ssh.run(FACTS_SCRIPT, timeout=timeout).out)
