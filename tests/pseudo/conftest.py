"""Fixtures of the pseudo-labelling tests."""

import pytest

from nst.testing import save_tiny_model


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A random-weight 10-class teacher of the digits model's size (predict's input)."""
    path = str(tmp_path_factory.mktemp("teacher"))
    save_tiny_model(path, 10)
    return path


@pytest.fixture
def predictor_calls(monkeypatch):
    """The pixel batches (float32 [n, S, S, 3], n rows before padding) that every
    `predict.Predictor` of the test is called with, in call order."""
    from nst.pseudo import predict

    calls = []
    call = predict.Predictor.__call__

    def recording(self, pixels):
        calls.append(pixels.copy())
        return call(self, pixels)

    monkeypatch.setattr(predict.Predictor, "__call__", recording)
    return calls
