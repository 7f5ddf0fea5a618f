"""`nst.fileio`: the one temporary-name scheme of the atomic writers, and the removal of
exactly the temporaries a killed writer of a path left."""

import os
import re

import pytest
import tensorflow as tf

from nst import fileio
from nst.data import writers


def _touch(path):
    with open(path, "wb") as f:
        f.write(b"partial")
    return path


def test_temporary_names_are_hidden_next_to_the_path_with_32_hex_digits(tmp_path):
    path = str(tmp_path / "threshold.json")
    names = {fileio.temporary_path(path) for _ in range(3)}
    assert len(names) == 3
    for name in names:
        directory, base = os.path.split(name)
        assert directory == str(tmp_path)
        assert re.fullmatch(r"\.threshold\.json\.tmp-[0-9a-f]{32}", base)
    # Record shards use the very same scheme.
    assert writers.temporary_path is fileio.temporary_path
    assert writers.remove_temporaries is fileio.remove_temporaries


def test_remove_temporaries_deletes_exactly_the_paths_own_temporaries(tmp_path):
    path = str(tmp_path / "stats_00003_0.json")
    mine = [_touch(fileio.temporary_path(path)) for _ in range(2)]
    others = [_touch(str(tmp_path / name)) for name in [
        "stats_00003_0.json",  # the output itself
        ".stats_00003_0.json.tmp-notes",
        ".stats_00003_0.json.tmp-backup",
        f".stats_00003_0.json.tmp-{'0' * 31}",
        f".stats_00003_0.json.tmp-{'0' * 33}",
        f".stats_00003_0.json.tmp-{'A' * 32}",
        f".stats_00003_0.json.tmp-{'0' * 32}.bak",
        f".stats_00003_0.json2.tmp-{'0' * 32}",  # a longer name with the same start
        f"stats_00003_0.json.tmp-{'0' * 32}",  # not hidden
        ".keep",
    ]] + [_touch(fileio.temporary_path(str(tmp_path / "stats_00004_0.json")))]
    assert fileio.remove_temporaries(path) == 2
    assert not any(map(os.path.exists, mine))
    assert sorted(os.listdir(tmp_path)) == sorted(map(os.path.basename, others))
    assert fileio.remove_temporaries(path) == 0
    assert fileio.remove_temporaries(str(tmp_path / "absent" / "x.json")) == 0


def test_glob_metacharacters_in_a_name_match_only_themselves(tmp_path):
    path = str(tmp_path / "a[1]*?.json")
    mine = _touch(fileio.temporary_path(path))
    other = _touch(fileio.temporary_path(str(tmp_path / "a1xy.json")))
    assert fileio.remove_temporaries(path) == 1
    assert not os.path.exists(mine) and os.path.exists(other)


def test_atomic_writes_use_the_scheme_and_leave_other_temporaries_alone(tmp_path,
                                                                        monkeypatch):
    """The writer itself does not delete stale temporaries (it cannot tell whether its
    caller owns the path: another process may be writing it); only a failed write's own
    temporary goes."""
    path = str(tmp_path / "results.json")
    live = _touch(fileio.temporary_path(path))  # as another writer's, still running
    fileio.atomic_write_json(path, {"a": 1})
    assert fileio.read_json(path) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == sorted(["results.json", os.path.basename(live)])
    seen = []
    rename = tf.io.gfile.rename

    def failing_rename(src, dst, overwrite=False):
        seen.append(src)
        raise tf.errors.PermissionDeniedError(None, None, "no")

    monkeypatch.setattr(tf.io.gfile, "rename", failing_rename)
    with pytest.raises(tf.errors.PermissionDeniedError):
        fileio.atomic_write_text(path, "new")
    monkeypatch.setattr(tf.io.gfile, "rename", rename)
    assert re.fullmatch(r"\.results\.json\.tmp-[0-9a-f]{32}", os.path.basename(seen[0]))
    assert not os.path.exists(seen[0])
    assert fileio.read_json(path) == {"a": 1}
    assert os.path.exists(live)
