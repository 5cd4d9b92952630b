"""shadowbox-rig: a hardware-in-the-loop test rig for the Shadow-box hypervisor.

Layers (see ARCHITECTURE.md): data (inventory, vocab, detect patterns), transports (ssh,
console, bmc, qmp), capabilities (power, nmi, monitor, shadowbox), the device (dut), front
ends (cli, plugin, report), and the virtual lab (rig.lab) which only writes inventory files.
"""

__version__ = "0.1.0"
