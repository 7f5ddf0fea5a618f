#!/usr/bin/env python
"""Parameters and forward FLOPs of every named EfficientNet (see nst.models.table_cli)."""

from nst.models import table_cli

if __name__ == "__main__":
    table_cli.run()
