"""The ``rig`` command line (click + rich). Every command calls the same objects the pytest plugin uses."""

from __future__ import annotations

import click

from rig import __version__


@click.group()
@click.version_option(__version__, prog_name="rig")
def main() -> None:
    """shadowbox-rig: deploy Shadow-box, raise NMIs, watch consoles, judge hangs."""


def _register_subcommands() -> None:
    from rig.lab.cli import lab

    main.add_command(lab)


_register_subcommands()
