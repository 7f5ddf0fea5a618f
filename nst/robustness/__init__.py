"""Robustness: ImageNet-C style corruptions (corruptions.py) and their evaluation."""
