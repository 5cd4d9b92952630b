"""The virtual lab: QEMU laptops, a console server, a virtual BMC and the sbsim payload.

The rig above never imports this package; the lab only writes inventory files under
``devices/lab/`` that the rig reads like any physical laptop's.
"""
