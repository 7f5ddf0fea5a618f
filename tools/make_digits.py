#!/usr/bin/env python
"""`nst-make-digits` (nst/data/make_dataset.py), e.g.
python tools/make_digits.py --output_dir=data/digits"""
from nst.data.make_dataset import digits_cli

if __name__ == "__main__":
    digits_cli()
