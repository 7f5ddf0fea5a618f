"""Confidence histograms and per-class thresholds (spec §4.2). Pure NumPy, no file I/O.

Notation: K classes, N images. An image's class is the argmax c of its teacher
distribution (first index on ties, as `np.argmax`), its confidence p = probabilities[c],
a float32 as read back from the prediction files.

Histogram: int64 [K, 101]. hist[c, j] counts images of class c whose confidence falls in
bucket j of the 0.01 grid GRID[j] = j/100 (float64):
    j < 100:  GRID[j] <= p < GRID[j+1]
    j = 100:  p >= 1.0
The comparison is made in float64 between the float32 value and the float64 grid, exactly
as the original (§4.2). So float32(0.3) = 0.30000001 is in bucket 30, but float32(0.29) =
0.28999999 is in bucket 28; only j in {0, 25, 50, 75, 100} have float32 values equal to the
grid point. (NumPy 2 would compare np.float32 with a Python float in float32 — every
comparison here casts to float64 first on purpose.)

Histograms of shards add up, so the global one is a plain sum; `choose_thresholds` then
walks each class's buckets from the top (§4.2). Everything here is a pure function of its
arguments so that a Beam pipeline can reuse it as is.
"""

import dataclasses
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

NUM_BUCKETS = 101
# j / 100 in float64: IEEE division is correctly rounded, so GRID[j] equals the float64
# parsed from the decimal literal (0.3 == 30 / 100), which is what a user types.
GRID = np.arange(NUM_BUCKETS, dtype=np.float64) / 100.0

JsonHistogram = Dict[str, List[List[float]]]  # {"<class>": [[t_0, n_0], ..., [t_100, n_100]]}


def confidences(probabilities: np.ndarray,
                ids: Optional[Sequence] = None) -> Tuple[np.ndarray, np.ndarray]:
    """probabilities float [N, K] -> (labels int64 [N], confidences float32 [N]).

    The values are first rounded to float32, the precision of the files (§3.4).
    Raises ValueError if a confidence is not finite or negative: such a value would
    silently land in an edge bucket. `ids` [N] (optional) name the bad image.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim != 2:
        raise ValueError(f"probabilities must be [N, K], got shape {probabilities.shape}")
    labels, conf = argmax_rows(probabilities)
    check_confidences(conf, ids=ids)
    return labels, conf


def argmax_rows(probabilities: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """float [N, K] -> (labels int64 [N], their values [N]), unchecked: np.argmax's first
    maximum (a row holding a NaN picks the NaN)."""
    labels = np.argmax(probabilities, axis=1).astype(np.int64)
    return labels, probabilities[np.arange(len(labels)), labels]


def check_confidences(conf: np.ndarray, what: str = "confidence",
                      ids: Optional[Sequence] = None):
    conf = np.asarray(conf)
    bad = ~np.isfinite(conf) | (conf < 0)
    if np.any(bad):
        i = int(np.argmax(bad))
        where = f"item {i}"
        if ids is not None:
            image_id = ids[i]
            if isinstance(image_id, bytes):
                image_id = image_id.decode("utf-8", "replace")
            where = f"image {image_id!r}"
        raise ValueError(f"{what} {conf[i]!r} ({where}) is not a finite value >= 0")


def bucket_indices(conf: np.ndarray) -> np.ndarray:
    """confidences [N] (rounded to float32) -> bucket ids int64 [N] in 0..100."""
    conf64 = np.asarray(conf, dtype=np.float32).astype(np.float64)
    check_confidences(conf64)
    # searchsorted(side='right') counts grid points <= p, so the bucket is that count - 1:
    # the bottom edge is inclusive and everything >= 1.0 goes to bucket 100.
    return np.searchsorted(GRID, conf64, side="right").astype(np.int64) - 1


def histogram(labels: np.ndarray, conf: np.ndarray, num_classes: int) -> np.ndarray:
    """labels int [N] (0..K-1), confidences [N] -> histogram int64 [K, 101]."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes})")
    flat = labels * NUM_BUCKETS + bucket_indices(conf)
    return np.bincount(flat, minlength=num_classes * NUM_BUCKETS).reshape(
        num_classes, NUM_BUCKETS).astype(np.int64)


def probabilities_histogram(probabilities: np.ndarray, num_classes: int) -> np.ndarray:
    """probabilities [N, K] -> histogram int64 [K, 101] of their argmax confidences."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim != 2 or probabilities.shape[1] != num_classes:
        raise ValueError(f"probabilities must be [N, {num_classes}], got "
                         f"{probabilities.shape}")
    labels, conf = confidences(probabilities)
    return histogram(labels, conf, num_classes)


def cumulative_from_top(hist: np.ndarray) -> np.ndarray:
    """[K, 101] -> [K, 101]: entry j = number of images with confidence >= GRID[j]."""
    return np.cumsum(np.asarray(hist)[:, ::-1], axis=1)[:, ::-1]


# --------------------------------------------------------------------------- JSON layout


def histogram_to_json(hist: np.ndarray, omit_empty: bool = True) -> JsonHistogram:
    """[K, 101] -> the original layout {"<class>": [[t_j, n_j] for j = 0..100]}.

    `omit_empty` leaves out classes without images (per-shard files, §4.2); the global
    `total_counts.json` lists all K classes.
    """
    out = {}
    for c, row in enumerate(np.asarray(hist)):
        if omit_empty and not row.any():
            continue
        out[str(c)] = [[float(t), int(n)] for t, n in zip(GRID, row)]
    return out


def histogram_from_json(obj: Mapping, num_classes: int, source: str = "histogram") -> np.ndarray:
    """The original layout -> int64 [K, 101]; missing classes count zero.

    Raises ValueError naming `source` for an unknown class, a wrong number of buckets,
    thresholds off the grid or negative counts.
    """
    hist = np.zeros((num_classes, NUM_BUCKETS), np.int64)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a JSON object of classes")
    for key, pairs in obj.items():
        try:
            c = int(key)
        except ValueError:
            raise ValueError(f"{source}: class key {key!r} is not an integer") from None
        if not 0 <= c < num_classes:
            raise ValueError(f"{source}: class {c} outside [0, {num_classes}) "
                             f"(check --num_label_classes)")
        if len(pairs) != NUM_BUCKETS:
            raise ValueError(f"{source}: class {c} has {len(pairs)} buckets, "
                             f"expected {NUM_BUCKETS}")
        thresholds = np.array([p[0] for p in pairs], np.float64)
        counts = np.array([p[1] for p in pairs], np.int64)
        if not np.array_equal(thresholds, GRID):
            raise ValueError(f"{source}: class {c} thresholds are not the 0.01 grid")
        if np.any(counts < 0):
            raise ValueError(f"{source}: class {c} has negative counts")
        hist[c] = counts
    return hist


# --------------------------------------------------------------------------- thresholds


def grid_index(threshold: float, name: str = "min_threshold") -> int:
    """j with GRID[j] == threshold exactly; ValueError if `threshold` is off the grid.

    The walk in `choose_thresholds` stops on float equality with `min_threshold` (§4.2),
    so a value such as 0.305 or 0.1 + 0.2 would never stop it.
    """
    matches = np.flatnonzero(GRID == float(threshold))
    if matches.size != 1:
        raise ValueError(f"--{name}={threshold!r} must be exactly on the 0.01 grid "
                         f"0, 0.01, ..., 1.0 (e.g. 0.3), as the original compares it "
                         f"for equality with j/100")
    return int(matches[0])


@dataclasses.dataclass(frozen=True, eq=False)  # arrays: __eq__ below compares values
class Thresholds:
    """Per-class selection thresholds.

    thresholds: float64 [K], each a grid value; images of class c are admitted when
      thresholds[c] <= confidence <= max_prob.
    totals: int64 [K], images of class c with confidence >= thresholds[c] (counted over
      buckets below max_prob, §4.2); the copy ratio is num_image / totals[c].
    """

    thresholds: np.ndarray
    totals: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.thresholds)

    def num_image_across_cat(self, num_image: int) -> int:
        """Σ_c min(total_c, num_image): the balanced set's expected size without upsampling."""
        return int(np.minimum(self.totals, num_image).sum())

    def to_json(self) -> Dict[str, List]:
        """`threshold.json` = {"<class>": [threshold, total]} for all K classes."""
        return {str(c): [float(t), int(n)]
                for c, (t, n) in enumerate(zip(self.thresholds, self.totals))}

    @classmethod
    def from_json(cls, obj: Mapping, num_classes: int,
                  source: str = "threshold.json") -> "Thresholds":
        missing = [c for c in range(num_classes) if str(c) not in obj]
        extra = sorted(set(obj) - {str(c) for c in range(num_classes)})
        if missing or extra:
            raise ValueError(f"{source} does not hold exactly the classes 0..{num_classes - 1} "
                             f"(missing {missing[:10]}, unexpected {extra[:10]}); "
                             f"check --num_label_classes")
        thresholds = np.array([float(obj[str(c)][0]) for c in range(num_classes)])
        totals = np.array([int(obj[str(c)][1]) for c in range(num_classes)], np.int64)
        return cls(thresholds, totals)

    def __eq__(self, other):
        return (isinstance(other, Thresholds)
                and np.array_equal(self.thresholds, other.thresholds)
                and np.array_equal(self.totals, other.totals))


def choose_threshold(counts: np.ndarray, num_image: int, min_threshold: float,
                     max_prob: float = 2.0, use_top: bool = True,
                     use_all: bool = False) -> Tuple[float, int]:
    """One class's (threshold, total) from its bucket counts int [101] (§4.2).

    Walks buckets j = 100, 99, ... that satisfy min_threshold <= GRID[j] < max_prob,
    accumulating their counts into `total`. Default: stops at the first j where
    total >= num_image. `use_top=False` or `use_all=True`: never stops early. Otherwise it
    stops at GRID[j] == min_threshold — so a class that never reaches num_image (or has
    no images at all: total 0) gets min_threshold.
    """
    j_min = grid_index(min_threshold)
    if not max_prob > GRID[j_min]:
        raise ValueError(f"--max_prob={max_prob} must exceed --min_threshold={min_threshold}")
    stop_early = use_top and not use_all
    total = 0
    for j in range(NUM_BUCKETS - 1, j_min - 1, -1):
        if GRID[j] >= max_prob:
            continue
        total += int(counts[j])
        if stop_early and total >= num_image:
            return float(GRID[j]), total
    return float(GRID[j_min]), total


def choose_thresholds(total_hist: np.ndarray, num_image: int, min_threshold: float,
                      max_prob: float = 2.0, use_top: bool = True,
                      use_all: bool = False) -> Thresholds:
    """Global histogram int [K, 101] -> Thresholds for every class (see `choose_threshold`)."""
    if num_image < 1:
        raise ValueError(f"--num_image must be >= 1, got {num_image}")
    pairs = [choose_threshold(row, num_image, min_threshold, max_prob, use_top, use_all)
             for row in np.asarray(total_hist)]
    return Thresholds(np.array([t for t, _ in pairs], np.float64),
                      np.array([n for _, n in pairs], np.int64))
