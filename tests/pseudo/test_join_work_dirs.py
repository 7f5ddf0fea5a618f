"""The hash join's work dirs (`nst.pseudo.join.remove_stale_work_dirs`): a rerun removes
the ones a killed run of the same (shard, task) left, and nothing else."""

import os

from nst.pseudo import join


def test_rerun_removes_only_its_own_stale_work_dirs(tmp_path):
    hex32 = "0123456789abcdef" * 2
    own = tmp_path / f"join-00003-1-{hex32}"
    other_task = tmp_path / f"join-00003-0-{hex32}"
    other_shard = tmp_path / f"join-00013-1-{hex32}"
    foreign = tmp_path / "join-00003-1-notours"
    for d in (own, other_task, other_shard, foreign):
        d.mkdir()
        (d / "pred-00000").write_bytes(b"x")
    assert join.remove_stale_work_dirs(str(tmp_path), 3, 1) == 1
    assert sorted(os.listdir(tmp_path)) == sorted(
        d.name for d in (other_task, other_shard, foreign))
    assert join.remove_stale_work_dirs(str(tmp_path / "missing"), 3, 1) == 0
