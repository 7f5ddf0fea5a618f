"""Where the filter's input for one (shard, task) is, and the checks of its record counts.

Two layouts (chosen by whether `prediction_dir` is set):

  pseudo-labelled  <input_dir>/<file_prefix>-%05d-of-%05d (shard, num_shards): every record
                   holds the image, its `image/id` and the teacher `probabilities` (schema
                   `pseudo_labeled`, or `unlabeled` with probabilities). No join needed.
  separate         the original layout (§3.3, §3.4):
                   images       <input_dir>/<file_prefix>-%05d-of-%05d   (schema `unlabeled`)
                   predictions  <prediction_dir>/train-info-%05d-of-%05d-%05d (shard, -, worker)
                   counts       <info_dir>/info-%05d-of-%05d-%05d.txt, {"image_num": N}
                                (checked when `info_dir` is set)

Slicing (§3.4): with R = total_replicas, task t handles the image records whose index i in
the shard file has i mod R == t, and the prediction file of worker t. Pseudo-labelled
input written by R predict workers (`<file_prefix>-%05d-of-%05d-%05d`, one file per
worker) is read whole, task t = worker t.

Ids: an image's id is its stored `image/id`, else `<image file basename>:<record index>`
(`schema.derived_id`, what `nst.data.readers` derives). A prediction's id is its stored
`image/id`. An original prediction has none: record k of worker t's file belongs to image
record k·R + t, i.e. it is joined by that position (`nst.pseudo.join`). (A stored id equal
to the reader's derived one, `train-info-...:<k>`, counts as absent.)

`nst.pseudo.reader` reads these files, `nst.pseudo.join` joins images with predictions.
"""

import dataclasses
from typing import List, NamedTuple, Optional, Sequence

import tensorflow as tf

from nst import fileio
from nst.data import writers


@dataclasses.dataclass(frozen=True)
class InputLayout:
    """Where the filter's inputs are (module doc). num_classes = K."""

    input_dir: str
    file_prefix: str = "train"
    prediction_dir: str = ""
    info_dir: str = ""
    num_shards: int = 128
    total_replicas: int = 1
    num_classes: int = 1000

    @property
    def separate_predictions(self) -> bool:
        return bool(self.prediction_dir)

    def image_path(self, shard: int) -> str:
        return fileio.join(self.input_dir, writers.shard_name(self.file_prefix, shard,
                                                              self.num_shards))

    def pseudo_labelled_slice(self, shard: int, task: int):
        """(path, task to slice by or None) of (shard, task)'s pseudo-labelled records:
        with total_replicas > 1, the worker file `<file_prefix>-%05d-of-%05d-%05d` that
        `--mode=predict --total_replicas=R --worker_id=task` writes, read whole, when it
        exists; else the shard file, sliced."""
        path = self.image_path(shard)
        if self.total_replicas > 1:
            worker_path = f"{path}-{task:05d}"
            if tf.io.gfile.exists(worker_path):
                return worker_path, None
        return path, task

    def prediction_path(self, shard: int, worker: int) -> str:
        return fileio.join(self.prediction_dir, writers.prediction_name(
            shard, self.num_shards, worker))

    def info_path(self, shard: int, worker: int) -> Optional[str]:
        if not self.info_dir:
            return None
        return fileio.join(self.info_dir, writers.info_name(shard, self.num_shards, worker))


class FileSlice(NamedTuple):
    """One input file of a reader: the records with index mod total_replicas == task,
    or all of them with task None."""

    path: str
    task: Optional[int] = None


def require(path: str, what: str):
    """FileNotFoundError '<what> <path> does not exist' unless `path` exists."""
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{what} {path} does not exist")


def pseudo_labelled_files(layout: InputLayout, shards: Sequence[int],
                          task: int) -> List[FileSlice]:
    """The pseudo-labelled input files of `shards` for `task` (each must exist)."""
    files = []
    for shard in shards:
        path, sliced = layout.pseudo_labelled_slice(shard, task)
        require(path, "Input shard")
        files.append(FileSlice(path, sliced))
    return files


def slice_text(layout: InputLayout, task: int) -> str:
    """' (records with index mod R == task)' for messages about a sliced file; '' for R = 1."""
    if layout.total_replicas == 1:
        return ""
    return f" (records with index mod {layout.total_replicas} == {task})"


def check_slices(layout: InputLayout, shard: int):
    """Separate layout: prediction files of workers 0..R-1 exist and no worker R
    (the original asserted the same, probing only powers of two, §4.1)."""
    if not layout.separate_predictions:
        return
    missing = [layout.prediction_path(shard, w) for w in range(layout.total_replicas)
               if not tf.io.gfile.exists(layout.prediction_path(shard, w))]
    if missing:
        raise FileNotFoundError(f"Missing prediction files for shard {shard} "
                                f"(--total_replicas={layout.total_replicas}): {missing}")
    extra = layout.prediction_path(shard, layout.total_replicas)
    if tf.io.gfile.exists(extra):
        raise ValueError(f"{extra} exists: the predictions have more worker slices than "
                         f"--total_replicas={layout.total_replicas}")


def info_count(layout: InputLayout, shard: int, task: int) -> Optional[int]:
    """`image_num` of the info file of (shard, worker=task), or None without info_dir."""
    path = layout.info_path(shard, task)
    if path is None:
        return None
    require(path, "Info file")
    try:
        return int(fileio.read_json(path)["image_num"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"Info file {path} is not {{\"image_num\": N}}: {e}") from None


def check_info(layout: InputLayout, shard: int, task: int, count: int, what: str):
    """ValueError unless `what` (a file, or its slice) holding `count` records agrees with
    the info file of (shard, task); nothing to check without info_dir."""
    expected = info_count(layout, shard, task)
    if expected is not None and expected != count:
        raise ValueError(f"Count mismatch: info file {layout.info_path(shard, task)} says "
                         f"image_num={expected}, but {what} holds {count} records")
