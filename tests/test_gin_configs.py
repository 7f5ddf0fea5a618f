"""Every shipped gin file parses, binds only known settings and finalises; recipe names
resolve from any working directory."""

import glob
import os

import pytest

from nst import config as config_lib
from nst import pipeline_config
from nst import recipes

GIN_DIR = recipes.RECIPES_DIR
GIN_FILES = sorted(glob.glob(os.path.join(GIN_DIR, "**", "*.gin"), recursive=True))


def _is_pipeline(path):
    with open(path) as f:
        return "PipelineConfig" in f.read()


def test_gin_files_exist():
    assert len(GIN_FILES) >= 17
    assert sum(map(_is_pipeline, GIN_FILES)) >= 6


@pytest.mark.parametrize("path", GIN_FILES, ids=lambda p: os.path.relpath(p, GIN_DIR))
def test_gin_file_binds_and_finalises(path, tmp_path):
    if _is_pipeline(path):
        # nst-pipeline recipes: every stage's settings must finalise (data not needed).
        files = [path]
        if os.path.relpath(path, GIN_DIR) == pipeline_config.QUICK_GIN_FILE:
            files.insert(0, pipeline_config.DEFAULT_GIN_FILE)  # an overlay (--quick)
        _, stages = pipeline_config.plan(files, [], {"run_dir": str(tmp_path)},
                                         check_data=False)
        for stage in stages:
            if stage.settings is not None:
                config = config_lib.finalize(stage.settings)
                assert config.model_name.startswith("efficientnet-")
        return
    overrides = {"teacher_model_path": "/nonexistent/teacher"}
    config = config_lib.build_config([path], [], overrides)
    assert config.model_name.startswith("efficientnet-")


def test_svhn_online_recipe_values():
    config = config_lib.build_config([os.path.join(GIN_DIR, "svhn", "student_online.gin")], [],
                                     {"teacher_model_path": "t"})
    assert (config.train_batch_size, config.unlabel_ratio, config.randaug_mag) == (128, 5.0, 5)
    assert config.small_image_model and config.num_label_classes == 10
    assert config.final_base_lr == 0.0002 and config.teacher_softmax_temp == 1.0


def test_imagenet_b7_recipe_values():
    config = config_lib.build_config([os.path.join(GIN_DIR, "imagenet", "efficientnet-b7.gin")],
                                     [], {"teacher_model_path": "t"})
    assert (config.unlabel_ratio, config.augment_name, config.randaug_mag) == (3.0, "v1", 27)
    assert config.train_steps == 109474


def test_recipes_are_package_data():
    assert GIN_DIR == os.path.join(os.path.dirname(os.path.abspath(config_lib.__file__)),
                                   "recipes")
    assert recipes.names() == sorted(os.path.relpath(p, GIN_DIR).replace(os.sep, "/")
                                     for p in GIN_FILES)
    assert "svhn/student_online.gin" in recipes.names()


def test_recipe_names_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = os.path.join(GIN_DIR, "svhn", "student_online.gin")
    assert recipes.resolve_gin_file("svhn/student_online.gin") == expected
    # The pipeline and nst-main share the resolver.
    assert pipeline_config.resolve_gin_file is recipes.resolve_gin_file
    # The recipes' old place in the source checkout, as in old command lines.
    assert recipes.resolve_gin_file("gin/svhn/student_online.gin") == expected
    by_name = config_lib.build_config(["svhn/student_online.gin"], [],
                                      {"teacher_model_path": "t"})
    assert by_name == config_lib.build_config([expected], [], {"teacher_model_path": "t"})
    # A file in the working directory comes first, even under a recipe's name.
    (tmp_path / "svhn").mkdir()
    (tmp_path / "svhn" / "student_online.gin").write_text(
        "ExperimentConfig.train_steps = 3\n")
    assert recipes.resolve_gin_file("svhn/student_online.gin") == "svhn/student_online.gin"
    assert config_lib.build_config(["svhn/student_online.gin"]).train_steps == 3
    with pytest.raises(FileNotFoundError, match="no_such_recipe.gin.*shipped recipe"):
        config_lib.build_config(["svhn/no_such_recipe.gin"])


def test_nst_main_takes_a_recipe_name(tmp_path):
    """`nst-main --gin_file=<recipe name>` from outside the checkout (flags parsed as
    nst-main parses them)."""
    from absl import flags
    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values)
    flag_values(["nst-main", "--gin_file=svhn/student_online.gin",
                 "--teacher_model_path=t", "--train_steps=5"])
    config = config_lib.build_config(flag_values.gin_file, flag_values.gin_param,
                                     config_lib.explicit_flags(flag_values))
    assert (config.train_batch_size, config.unlabel_ratio, config.train_steps) == \
        (128, 5.0, 5)
