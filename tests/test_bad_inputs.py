"""tools/bad_inputs.py (docs/errors.md): a few fast cases, run as the binaries, print one
`error:` line, exit 1, no traceback, and leave their output directory as it was."""

import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("bad_inputs",
                                               os.path.join(REPO, "tools", "bad_inputs.py"))
bad_inputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bad_inputs)


@pytest.mark.parametrize("name, message", [
    ("model_table_unknown_model", "error: Unknown model name 'efficientnet-b9'"),
    ("main_gin_wrong_type", "error: ExperimentConfig.unlabel_ratio = 'two'"),
])
def test_case_prints_one_line_and_writes_nothing(name, message, tmp_path):
    result = bad_inputs.run_case(bad_inputs.BY_NAME[name], str(tmp_path))
    assert result.returncode == 1
    assert len(result.error_lines) == 1 and result.error_lines[0].startswith(message)
    assert not result.traceback
    assert result.untouched
    assert not (tmp_path / "model").exists()
