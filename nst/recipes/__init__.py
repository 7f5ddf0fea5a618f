"""The shipped gin recipes, installed with the package (package data of `nst.recipes`).

    digits/          the offline demo: noisy_student.gin (nst-pipeline's default),
                     online.gin, quick.gin (the --quick overlay)
    fashion_mnist/   noisy_student.gin
    svhn/            teacher.gin, student_online.gin, student_offline.gin (nst-main),
                     pipeline_online.gin, pipeline_offline.gin (nst-pipeline)
    imagenet/        efficientnet-b0.gin ... efficientnet-b7.gin (nst-main),
                     noisy_student_l2.gin (nst-pipeline)

`nst-main --gin_file=...` and `nst-pipeline --gin_file=...` take a path, or the name of a
recipe relative to this folder (`svhn/student_online.gin`); gin `include` lines inside a
gin file find recipes by the same names.
"""

import os
from typing import List

import gin
import tensorflow as tf

RECIPES_DIR = os.path.dirname(os.path.abspath(__file__))
# Where the recipes lived in the source checkout before they became package data; old
# command lines (`--gin_file=gin/svhn/student_online.gin`) still find them.
_OLD_PREFIX = "gin/"


def names() -> List[str]:
    """Every shipped recipe, as the name `resolve_gin_file` takes (`digits/online.gin`)."""
    out = []
    for root, _, files in os.walk(RECIPES_DIR):
        out += [os.path.relpath(os.path.join(root, f), RECIPES_DIR).replace(os.sep, "/")
                for f in files if f.endswith(".gin")]
    return sorted(out)


def resolve_gin_file(name: str) -> str:
    """`name` if that file exists (local or gs:// path), else the shipped recipe `name`.

    Raises:
      FileNotFoundError: neither exists.
    """
    if tf.io.gfile.exists(name):
        return name
    for recipe in (name, name[len(_OLD_PREFIX):] if name.startswith(_OLD_PREFIX) else None):
        if recipe and not os.path.isabs(recipe):
            candidate = os.path.join(RECIPES_DIR, recipe)
            if os.path.isfile(candidate):
                return candidate
    raise FileNotFoundError(
        f"No gin file {name!r}: not a file (relative to the working directory "
        f"{os.getcwd()}) and not a shipped recipe in {RECIPES_DIR} (e.g. "
        f"'digits/noisy_student.gin', 'svhn/student_online.gin')")


def add_search_path():
    """Lets gin `include 'svhn/teacher.gin'` lines find the recipes (idempotent)."""
    if RECIPES_DIR not in gin.config._LOCATION_PREFIXES:
        gin.add_config_file_search_path(RECIPES_DIR)
