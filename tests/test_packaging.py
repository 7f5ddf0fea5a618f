"""An installed wheel works without the checkout: recipes, console scripts, the pipeline.

Builds a wheel of the checkout (offline: `pip wheel --no-deps --no-build-isolation
--no-index`, from a copy of the tree so that no build/ or egg-info is written into the
checkout and no stale build/ leaks into the wheel), installs it with `--no-deps` into a
fresh `python -m venv --system-site-packages` outside the checkout (TensorFlow and the other
requirements come from the system site-packages), and then, from a working directory
outside the checkout and with the venv's bin/ first on PATH:

  * checks that the venv's `nst` is the wheel's (its `__file__` under the venv, not the
    editable checkout: the venv's site-packages precedes the system one on sys.path, and
    the editable install's finder is appended to sys.meta_path, after the path finder;
    PYTHONNOUSERSITE=1 and no PYTHONPATH keep a user-site or path install out);
  * plans every shipped pipeline recipe (`nst.pipeline_config.plan(..., check_data=False)`)
    and builds every nst-main recipe (`nst.config.build_config`), by recipe name, and checks
    that each resolved to a file of the installed package (gin `include` lines too: the
    includes are only findable there);
  * runs `nst-pipeline --quick --emit_commands` and then the emitted data-stage command
    (`nst-make-digits`, a console script of the wheel);
  * runs the real `nst-pipeline --quick`, cut to one iteration of 10-step models (data,
    teacher, predict, filter, student, report).

Cost: the plain `--quick` run (two iterations of 40-step models) takes 3.5-5.5 minutes on a
2-core CPU, too long for this check, hence the cut-down run; the pipeline's own numbers are
tested in tests/test_pipeline.py. This test took 4.5 minutes of wall time (2 minutes of
CPU) on a 2-core machine shared with a benchmark (load 5-6): wheel and venv ~15 s,
planning every recipe ~15 s, the cut-down run ~3.5 minutes (its stages 160 s).
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(REPO, "nst", "recipes")

pytestmark = pytest.mark.slow


def _shipped_recipes():
    out = []
    for root, _, files in os.walk(RECIPES):
        out += [os.path.relpath(os.path.join(root, f), RECIPES).replace(os.sep, "/")
                for f in files if f.endswith(".gin")]
    return sorted(out)


def _run(args, **kwargs):
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, (f"{shlex.join(map(str, args))} failed:\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """(venv dir, env of commands inside it, a working directory outside the checkout)."""
    root = tmp_path_factory.mktemp("packaging")
    assert not str(root).startswith(REPO + os.sep)
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "runs", "__pycache__", ".pytest_cache"))
    wheels = root / "wheels"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PYTHONNOUSERSITE="1", TF_CPP_MIN_LOG_LEVEL="2", PIP_NO_INDEX="1")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "-w", str(wheels), str(source)], env=env, cwd=root)
    [wheel] = list(wheels.glob("nst-*.whl"))
    directory = root / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(directory)],
         env=env, cwd=root)
    python = directory / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--no-deps", "--force-reinstall",
          "--no-index", str(wheel)], env=env, cwd=root)
    env.update(VIRTUAL_ENV=str(directory),
               PATH=os.pathsep.join([str(directory / "bin"), env.get("PATH", "")]))
    cwd = root / "elsewhere"
    cwd.mkdir()
    return directory, env, cwd


PLAN_EVERY_RECIPE = textwrap.dedent("""
    import json, os, sys
    import nst
    from nst import config, pipeline_config, recipes

    run_dir = sys.argv[1]
    out = {"nst": os.path.abspath(nst.__file__), "recipes_dir": recipes.RECIPES_DIR,
           "names": recipes.names(), "resolved": {}, "stages": {}}
    for name in recipes.names():
        path = recipes.resolve_gin_file(name)
        out["resolved"][name] = os.path.abspath(path)
        with open(path) as f:
            is_pipeline = "PipelineConfig" in f.read()
        if is_pipeline:
            files = [name]
            if name == pipeline_config.QUICK_GIN_FILE:  # an overlay (--quick)
                files.insert(0, pipeline_config.DEFAULT_GIN_FILE)
            _, stages = pipeline_config.plan(files, [], {"run_dir": run_dir},
                                             check_data=False)
            out["stages"][name] = [s.name for s in stages]
        else:
            settings = config.build_config(
                [name], [], {"teacher_model_path": "/nonexistent/teacher"})
            out["stages"][name] = settings.model_name
    print("RESULT " + json.dumps(out))
""")


def test_wheel_ships_the_recipes_and_plans_them_outside_the_checkout(venv):
    directory, env, cwd = venv
    site = os.path.realpath(directory)
    done = _run([str(directory / "bin" / "python"), "-c", PLAN_EVERY_RECIPE,
                 str(cwd / "plans")], env=env, cwd=cwd)
    line = next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert os.path.realpath(out["nst"]).startswith(site + os.sep), out["nst"]
    assert not os.path.realpath(out["nst"]).startswith(REPO + os.sep)
    assert os.path.realpath(out["recipes_dir"]).startswith(site + os.sep)
    shipped = _shipped_recipes()
    assert len(shipped) >= 18 and out["names"] == shipped
    for name, path in out["resolved"].items():
        assert os.path.realpath(path) == os.path.join(
            os.path.realpath(out["recipes_dir"]), *name.split("/")), name
    assert out["stages"]["digits/noisy_student.gin"][:3] == ["data", "teacher", "predict-1"]
    assert out["stages"]["svhn/pipeline_offline.gin"][0] == "teacher"  # via two includes
    assert out["stages"]["imagenet/efficientnet-b7.gin"] == "efficientnet-b7"
    assert out["stages"]["svhn/student_online.gin"] == "efficientnet-b0"


def test_pipeline_from_the_wheel(venv):
    directory, env, cwd = venv
    for script in ("nst-pipeline", "nst-main", "nst-filter-unlabel", "nst-make-digits",
                   "nst-make-fashion-mnist"):
        assert shutil.which(script, path=env["PATH"]) == str(directory / "bin" / script)

    # Plan only: configs/ and commands.sh; then the data stage's command as emitted.
    emit_dir = cwd / "emit"
    _run(["nst-pipeline", "--quick", "--emit_commands", f"--run_dir={emit_dir}"],
         env=env, cwd=cwd)
    assert (emit_dir / "configs" / "teacher.gin").exists()
    assert not (emit_dir / "iteration_0").exists()
    with open(emit_dir / "commands.sh") as f:
        commands = [l for l in f.read().splitlines() if l and not l.startswith(("#", "set "))]
    data = shlex.split(commands[0])
    assert data[:2] == ["nst-make-digits", f"--output_dir={emit_dir}/data"]
    made = _run(data, env=env, cwd=cwd)
    assert sum(json.loads(made.stdout.strip().splitlines()[-1]).values()) == 1797

    # The real thing: every stage kind, one iteration, 10 steps per model (one
    # checkpoint and evaluation each).
    run_dir = cwd / "run"
    _run(["nst-pipeline", "--quick", f"--run_dir={run_dir}"]
         + [f"--gin_param={p}" for p in (
             "PipelineConfig.num_iterations = 1", "teacher/ExperimentConfig.train_steps = 10",
             "student/ExperimentConfig.train_steps = 10",
             "ExperimentConfig.save_checkpoints_steps = 10")], env=env, cwd=cwd, timeout=1200)
    with open(run_dir / "results.json") as f:
        results = json.load(f)
    assert [s["name"] for s in results["stages"]] == ["teacher", "student-1"]
    for stage in results["stages"]:
        assert stage["metrics"]["test"]["num_images"] == 539
    assert (run_dir / "report.md").exists()
