"""Ways the controller talks to a device or its lab: SSH (commands, file copies), the BMC (IPMI),
QEMU's QMP, a labgrid coordinator (places shared by several controllers)."""
