"""Gin may import only the project's modules and gin's (nst.safe_gin): in files, in what
they include and in --gin_param bindings, refused before anything is imported."""

import re
import sys

import gin
import pytest

from nst import config as config_lib
from nst import pipeline_config as pc
from nst import safe_gin

MARKER_MODULE = "nst_test_marker_module"


@pytest.fixture
def marker(tmp_path, monkeypatch):
    """An importable module (and a package with a subpackage) that would write a marker
    file when imported; returns the marker's path."""
    path = tmp_path / "imported.txt"
    code = f"open({str(path)!r}, 'w').write('imported')\n"
    (tmp_path / f"{MARKER_MODULE}.py").write_text(code)
    package = tmp_path / "nst_test_marker_package"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text(code)
    (package / "sub" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield path
    for name in [MARKER_MODULE, "nst_test_marker_package", "nst_test_marker_package.sub"]:
        sys.modules.pop(name, None)


def write(path, *lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_import_os_in_a_gin_file_is_refused_naming_file_and_line(tmp_path):
    gin_file = write(tmp_path / "bad.gin", "ExperimentConfig.train_steps = 5", "import os")
    with pytest.raises(ValueError, match=re.escape(gin_file) + r" line 2: 'import os' is "
                                         r"refused.*nst, nst\.\*.*gin\.\*.*not 'os'"):
        config_lib.build_config([gin_file])
    # The pipeline's parse is the same one.
    with pytest.raises(ValueError, match=r"bad.gin line 2: 'import os' is refused"):
        pc.plan([gin_file], [], {"run_dir": str(tmp_path / "run")}, check_data=False)


@pytest.mark.parametrize("line", [f"import {MARKER_MODULE}",
                                  f"from {MARKER_MODULE} import anything",
                                  f"import {MARKER_MODULE} as alias",
                                  "import nst_test_marker_package.sub"])
def test_a_foreign_module_is_refused_before_it_is_imported(tmp_path, marker, line):
    gin_file = write(tmp_path / "bad.gin", "ExperimentConfig.train_steps = 5", line)
    with pytest.raises(ValueError, match=rf"bad.gin line 2: '{line}' is refused"):
        config_lib.build_config([gin_file])
    assert not marker.exists()
    with pytest.raises(ValueError, match=rf"bad.gin line 2: '{line}' is refused"):
        pc.plan([gin_file], [], {"run_dir": str(tmp_path / "run")}, check_data=False)
    assert not marker.exists()


def test_the_refusal_comes_before_any_file_is_parsed(tmp_path, marker):
    """An allowed first file is not parsed (bound) before a later file's refusal."""
    good = write(tmp_path / "good.gin", "ExperimentConfig.train_steps = 5")
    bad = write(tmp_path / "bad.gin", f"import {MARKER_MODULE}")
    gin.clear_config()
    try:
        with pytest.raises(safe_gin.GinImportError):
            safe_gin.parse_config_files_and_bindings([good, bad], [])
        with pytest.raises(ValueError, match="no bound parameters"):
            gin.query_parameter("ExperimentConfig.train_steps")
    finally:
        gin.clear_config()
    assert not marker.exists()


def test_nst_modules_and_gin_features_may_be_imported(tmp_path):
    gin_file = write(tmp_path / "dynamic.gin",
                     "from __gin__ import dynamic_registration",
                     "import nst.config",
                     "nst.config.ExperimentConfig.train_steps = 5")
    assert config_lib.build_config([gin_file]).train_steps == 5
    gin_file = write(tmp_path / "plain.gin", "import nst.config", "from nst import recipes",
                     "ExperimentConfig.train_steps = 6")
    assert config_lib.build_config([gin_file]).train_steps == 6
    assert all(map(safe_gin.allowed_module, ["nst", "nst.config", "gin", "gin.tf"]))
    assert not any(map(safe_gin.allowed_module, ["os", "nstx", "ginx.tf", "", "tensorflow"]))


def test_an_included_files_imports_are_checked(tmp_path, marker):
    included = write(tmp_path / "included.gin", "ExperimentConfig.train_steps = 5",
                     f"import {MARKER_MODULE}")
    top = write(tmp_path / "top.gin", "ExperimentConfig.train_batch_size = 8",
                f"include {included!r}")
    with pytest.raises(ValueError, match=rf"included.gin line 2 \(included from "
                                         rf"{re.escape(top)} line 2\): "
                                         rf"'import {MARKER_MODULE}' is refused"):
        config_lib.build_config([top])
    assert not marker.exists()
    # Two levels down, and through a --gin_param include.
    middle = write(tmp_path / "middle.gin", f"include {top!r}")
    with pytest.raises(ValueError, match=r"included.gin line 2 \(included from .*top.gin "
                                         r"line 2\) \(included from .*middle.gin line 1\)"):
        pc.plan([middle], [], {"run_dir": str(tmp_path / "run")}, check_data=False)
    with pytest.raises(ValueError, match=r"included.gin line 2 \(included from "
                                         r"--gin_param line 1\)"):
        config_lib.build_config([], [f"include {included!r}"])
    assert not marker.exists()


def test_a_gin_param_import_is_refused(tmp_path, marker):
    with pytest.raises(ValueError, match=rf"--gin_param line 2: 'import {MARKER_MODULE}' "
                                         rf"is refused"):
        config_lib.build_config([], ["ExperimentConfig.train_steps = 5",
                                     f"import {MARKER_MODULE}"])
    with pytest.raises(ValueError, match=r"--gin_param line 1: 'import os' is refused"):
        pc.plan([pc.DEFAULT_GIN_FILE], ["import os"], {"run_dir": str(tmp_path / "run")},
                check_data=False)
    assert not marker.exists()


def test_an_include_does_not_import_a_package_to_find_the_file(tmp_path, marker):
    """gin's package-resource reader would import `nst_test_marker_package` to look for
    'nst_test_marker_package/sub/x.gin'."""
    top = write(tmp_path / "top.gin", "include 'nst_test_marker_package/sub/x.gin'")
    with pytest.raises(OSError, match="Unable to open file: nst_test_marker_package"):
        config_lib.build_config([top])
    assert not marker.exists()
    # The shipped recipes' includes still resolve, and gin's readers are as before.
    readers = list(gin.config._FILE_READERS)
    assert config_lib.build_config(["svhn/student_online.gin"], [],
                                   {"teacher_model_path": "t"}).train_batch_size == 128
    assert gin.config._FILE_READERS == readers


def test_an_include_cycle_is_an_error_naming_it(tmp_path):
    first, second = tmp_path / "first.gin", tmp_path / "second.gin"
    write(first, f"include {str(second)!r}")
    write(second, "ExperimentConfig.train_steps = 5", f"include {str(first)!r}")
    with pytest.raises(ValueError, match=r"second.gin line 2 \(included from .*first.gin "
                                         r"line 1\): include .*first.gin' includes itself "
                                         r"\(.*first.gin -> .*second.gin -> .*first.gin\)"):
        config_lib.build_config([str(first)])


def test_syntax_errors_are_reported_as_before(tmp_path):
    gin_file = write(tmp_path / "broken.gin", "ExperimentConfig.train_steps = = 5")
    with pytest.raises(ValueError, match="Bad gin configuration.*broken.gin"):
        config_lib.build_config([gin_file])


def test_the_check_imports_nothing(tmp_path, marker):
    gin_file = write(tmp_path / "bad.gin", f"import {MARKER_MODULE}")
    with pytest.raises(safe_gin.GinImportError):
        safe_gin.check_imports([gin_file])
    safe_gin.check_imports([write(tmp_path / "good.gin", "import nst.config")],
                           ["ExperimentConfig.train_steps = 5"])
    assert not marker.exists() and MARKER_MODULE not in sys.modules
