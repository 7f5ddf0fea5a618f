"""Fixtures of the pseudo-labelling tests."""

import pytest

from nst.testing import save_tiny_model


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A random-weight 10-class teacher of the digits model's size (predict's input)."""
    path = str(tmp_path_factory.mktemp("teacher"))
    save_tiny_model(path, 10)
    return path
