"""``rig lab ...``: bring the virtual lab up and down."""

from __future__ import annotations

import click


@click.group()
def lab() -> None:
    """The virtual lab: QEMU laptops with a console server and a virtual BMC."""
