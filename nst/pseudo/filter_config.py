"""The filter's settings, flags and output layout (spec §4), defined once.

`FilterConfig`'s fields are the one definition of the filter's settings: `define_flags`
makes the flags of `nst-filter-unlabel` and of the Beam binary from them (help in
`HELP`), `config_from_flags` reads those flags back and `FilterConfig.to_flags` writes a
config as them (the pipeline's commands). The same config names every file of a run
(`FilterConfig.path` and the per-shard paths), and `output_paths` / `stats_root` give the
reduce and finalize files of a run known only by its directories, so that the steps
(`nst.pseudo.filter`, `nst.pseudo.beam`) and the readers (`nst.report`) cannot disagree on
where a file lives.
"""

import dataclasses
from typing import Dict, List

from absl import flags

from nst import fileio
from nst import settings_check
from nst.data import writers
from nst.pseudo import histogram as hist_lib
from nst.pseudo import layout as layout_lib
from nst.settings_check import Range

# Flags whose values the thresholds depend on; `select_shard` refuses to mix them.
_REDUCE_KEYS = ("num_label_classes", "num_image", "min_threshold", "max_prob", "use_top",
                "use_all", "num_shards", "total_replicas", "only_use_num_shards")


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    """All settings of the filter (flag names of §2.4 plus `seed`, `shuffle_buffer`).

    prelim_stats_dir defaults to <output_dir>/prelim_stats. upsample: allow more than one
    copy per image. use_top: pick the highest threshold reaching num_image (else always
    min_threshold). use_all: keep every image >= min_threshold once. only_use_num_shards:
    build the thresholds from the first N shards' histograms only (-1 = all); selection
    still runs on every shard.

    The fields are the settings' one definition: `define_flags` makes the binaries'
    flags from them (help in `HELP`), `config_from_flags` reads them back, `to_flags`
    writes a config as those flags (the pipeline's commands), and `path` /
    `output_paths` name the output files for writers and readers alike.
    """

    input_dir: str
    output_dir: str
    prediction_dir: str = ""
    info_dir: str = ""
    prelim_stats_dir: str = ""
    file_prefix: str = "train"
    num_shards: int = 128
    total_replicas: int = 1
    only_use_num_shards: int = -1
    num_label_classes: int = 1000
    num_image: int = 1300
    min_threshold: float = 0.0
    max_prob: float = 2.0
    upsample: bool = True
    use_top: bool = True
    use_all: bool = False
    seed: int = 12345
    shuffle_buffer: int = 10000

    def __post_init__(self):
        settings_check.check(self, RANGES)
        if not self.output_dir:
            raise ValueError("output_dir is required")
        hist_lib.grid_index(self.min_threshold)  # off-grid: clear error up front
        if not self.max_prob > self.min_threshold:
            raise ValueError(f"max_prob={self.max_prob} must exceed "
                             f"min_threshold={self.min_threshold}")
        if not -1 <= self.only_use_num_shards <= self.num_shards \
                or self.only_use_num_shards == 0:
            raise ValueError(f"only_use_num_shards must be -1 or 1..num_shards, got "
                             f"{self.only_use_num_shards}")

    # ----------------------------------------------------------------------- names

    @property
    def stats_root(self) -> str:
        return stats_root(self.output_dir, self.prelim_stats_dir)

    @property
    def layout(self) -> layout_lib.InputLayout:
        return layout_lib.InputLayout(self.input_dir, self.file_prefix, self.prediction_dir,
                                      self.info_dir, self.num_shards, self.total_replicas,
                                      self.num_label_classes)

    def histogram_path(self, shard: int, task: int) -> str:
        return fileio.join(self.stats_root, f"prelim_stats_{shard:05d}_{task:d}.json")

    def stats_path(self, shard: int, task: int) -> str:
        return fileio.join(self.output_dir, "stats", f"stats_{shard:05d}_{task:d}.json")

    def data_path(self, shard: int, task: int) -> str:
        return writers.filtered_path(self.output_dir, task, shard, self.num_shards)

    def input_pattern(self) -> str:
        """Every pseudo-labelled (or image) input file of every shard and worker."""
        return fileio.join(self.input_dir, f"{self.file_prefix}-*-of-*")

    def data_pattern(self) -> str:
        """Every filtered data file of every shard and task."""
        return fileio.join(self.output_dir, "data", "train-*-of-*")

    def path(self, name: str) -> str:
        """total_counts*.json live in prelim_stats_dir, the rest in output_dir (§3.7)."""
        return output_path(self.output_dir, name, self.prelim_stats_dir)

    def check_task(self, shard: int, task: int):
        if not 0 <= shard < self.num_shards:
            raise ValueError(f"shard_id {shard} outside [0, num_shards={self.num_shards})")
        if not 0 <= task < self.total_replicas:
            raise ValueError(f"task {task} outside [0, total_replicas={self.total_replicas}); "
                             f"each shard has one task per prediction worker slice")

    def reduce_settings(self) -> Dict:
        return {key: getattr(self, key) for key in _REDUCE_KEYS}

    def histogram_shards(self) -> range:
        return range(self.num_shards if self.only_use_num_shards < 0
                     else self.only_use_num_shards)

    def to_flags(self) -> List[str]:
        """Every field as the flag of `nst-filter-unlabel` (`define_flags`), in field
        order: '--name=value', the 0/1 integer flags (upsample, use_top) as 0 or 1, the
        boolean ones as true/false. Parsed back by `config_from_flags`, they give this
        config."""
        return [f"--{field.name}={_flag_text(field, getattr(self, field.name))}"
                for field in dataclasses.fields(self)]


# --------------------------------------------------------------------------- output names

# The reduce and finalize steps' files, by the name `FilterConfig.path` takes.
OUTPUT_FILES = ("total_counts.json", "total_counts_sum.json", "filter_config.json",
                "num_image_across_cat.json", "threshold.json", "final_stats.json")


def stats_root(output_dir: str, prelim_stats_dir: str = "") -> str:
    """The histograms' directory: prelim_stats_dir, default <output_dir>/prelim_stats."""
    return prelim_stats_dir or fileio.join(output_dir, "prelim_stats")


def output_path(output_dir: str, name: str, prelim_stats_dir: str = "") -> str:
    """`FilterConfig.path` of a run with these directories: total_counts*.json in the
    stats root, final_stats.json in <output_dir>/stats, the rest in output_dir."""
    if name.startswith("total_counts"):
        return fileio.join(stats_root(output_dir, prelim_stats_dir), name)
    if name == "final_stats.json":
        return fileio.join(output_dir, "stats", name)
    return fileio.join(output_dir, name)


def output_paths(output_dir: str, prelim_stats_dir: str = "") -> Dict[str, str]:
    """{name: path} of every file of `OUTPUT_FILES`, as a filter run with these
    directories writes them (readers such as `nst.report` use this)."""
    return {name: output_path(output_dir, name, prelim_stats_dir) for name in OUTPUT_FILES}


# --------------------------------------------------------------------------- flags

# The help of each FilterConfig field's flag (the original's flag names and defaults;
# `define_flags` generates the flags from the fields, so they cannot drift apart).
HELP = {
    "input_dir": "Unlabeled shard files (raw, or pseudo-labelled).",
    "output_dir": "Output root: data/, stats/, threshold.json.",
    "prediction_dir": "Directory of train-info-* prediction files; empty: the input "
                      "records hold the predictions.",
    "info_dir": "Directory of info-*.txt image counts (checked if set).",
    "prelim_stats_dir": "Per-shard histograms and global totals; default "
                        "<output_dir>/prelim_stats.",
    "file_prefix": "Prefix of the input shard files.",
    "num_shards": "Number of shards.",
    "total_replicas": "Prediction worker slices (= tasks) per shard.",
    "only_use_num_shards": "Build thresholds from the first N shards' histograms only "
                           "(-1 = all).",
    "num_label_classes": "Number of classes K.",
    "num_image": "Target number of images per class.",
    "min_threshold": "Lowest confidence admitted (inclusive); must be on the 0.01 grid.",
    "max_prob": "Highest confidence admitted (inclusive).",
    "upsample": "1: duplicate images of small classes; 0: at most once.",
    "use_top": "1: highest threshold reaching num_image; 0: always min_threshold.",
    "use_all": "Keep every image >= min_threshold once (no balancing).",
    "seed": "Seeds the per-image copy draw and the output shuffle.",
    "shuffle_buffer": "Records held to shuffle each output file (<= 1: no shuffle).",
}
# bool fields that are 0/1 integer flags, as in the original (use_all is a boolean flag).
INT_BOOL_FLAGS = ("upsample", "use_top")
# Flag defaults of the fields without one (required: FilterConfig names a missing one).
_REQUIRED_FLAG_DEFAULTS = {"input_dir": "", "output_dir": ""}
# The values each number setting may take: `FilterConfig` checks them, whatever set it,
# and the binaries' flags carry them as absl bounds. The cross-field rules
# (only_use_num_shards, max_prob) and min_threshold's 0.01 grid stay in
# `FilterConfig.__post_init__`.
RANGES = {
    "num_shards": Range(1),
    "total_replicas": Range(1),
    "num_label_classes": Range(1),
    "num_image": Range(1),
    "min_threshold": Range(0, 1),
    "upsample": Range(0, 1),  # 0/1 integer flags
    "use_top": Range(0, 1),
    "seed": Range(0),
}


def _flag_kind(field) -> str:
    """'string', 'integer', 'float' or 'boolean': the absl flag type of a field."""
    if field.type in (bool, "bool"):
        return "integer" if field.name in INT_BOOL_FLAGS else "boolean"
    return {int: "integer", "int": "integer", float: "float",
            "float": "float"}.get(field.type, "string")


def _flag_default(field):
    if field.default is dataclasses.MISSING:
        return _REQUIRED_FLAG_DEFAULTS[field.name]
    return int(field.default) if _flag_kind(field) == "integer" else field.default


def _flag_text(field, value) -> str:
    kind = _flag_kind(field)
    if kind == "boolean":
        return "true" if value else "false"
    if kind == "integer":
        return str(int(value))
    return str(value)


def flag_definitions() -> List[tuple]:
    """(absl type, name, default, help, extra keyword arguments) of each FilterConfig
    field's flag, in field order."""
    return [(_flag_kind(field), field.name, _flag_default(field), HELP[field.name],
             RANGES[field.name].flag_bounds() if field.name in RANGES else {})
            for field in dataclasses.fields(FilterConfig)]


def define_flags(flag_values=None):
    """Defines one absl flag per FilterConfig field on `flag_values` (default: the global
    `flags.FLAGS`), skipping names already defined there."""
    flag_values = flags.FLAGS if flag_values is None else flag_values
    for kind, name, default, help_text, kwargs in flag_definitions():
        if name not in flag_values:
            getattr(flags, f"DEFINE_{kind}")(name, default, help_text,
                                              flag_values=flag_values, **kwargs)


def config_from_flags(flag_values=None) -> FilterConfig:
    """The FilterConfig of parsed flags (`define_flags`); 0/1 flags become bools."""
    flag_values = flags.FLAGS if flag_values is None else flag_values
    values = {}
    for field in dataclasses.fields(FilterConfig):
        value = flag_values[field.name].value
        values[field.name] = bool(value) if field.name in INT_BOOL_FLAGS else value
    return FilterConfig(**values)
