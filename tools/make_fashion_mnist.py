#!/usr/bin/env python
"""`nst-make-fashion-mnist` (nst/data/make_dataset.py), e.g.
python tools/make_fashion_mnist.py --output_dir=data/fashion_mnist"""
from nst.data.make_dataset import fashion_mnist_cli

if __name__ == "__main__":
    fashion_mnist_cli()
