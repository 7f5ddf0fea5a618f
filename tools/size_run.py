#!/usr/bin/env python
"""Memory, largest batch and time of a model or recipe on a device (see nst.sizing.cli)."""

from nst.sizing import cli

if __name__ == "__main__":
    cli.cli()
