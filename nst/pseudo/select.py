"""Per-image selection and copy counts (spec §4.3), output shuffling, final statistics (§4.5).

Pure functions of their arguments — no file I/O, no global RNG — so that a Beam pipeline
can reuse them and so that the result does not depend on how images are split into shards
or workers:

* an image of class c with confidence p (float32, compared in float64 as in §4.2) is kept
  iff thresholds[c] <= p <= max_prob;
* its copy ratio is x = num_image / total_c (use_all: 1; upsample off: min(x, 1));
* its copy count is floor(x) + [u < x - floor(x)], u = `uniform_from_id(seed, image_id)`,
  a uniform number in [0, 1) derived from a keyed hash of the id alone. The original drew u
  from NumPy's unseeded global RNG, so its output was not reproducible (§11).
Expected copies per class: x · total_c = num_image (both when thinning and duplicating).
"""

import functools
import hashlib
import math
from typing import Dict, Iterable, Iterator, Mapping, Optional, Sequence, TypeVar

import numpy as np

from nst.pseudo import histogram as hist_lib
from nst.pseudo.histogram import Thresholds, check_confidences

T = TypeVar("T")
_INV_2_53 = 1.0 / (1 << 53)


def uniform_from_id(seed: int, image_id) -> float:
    """A uniform float in [0, 1) that depends only on (seed, image_id).

    BLAKE2b keyed with the seed, 53 bits of the digest -> a float64 grid of 2^-53 (every
    value exactly representable, so the draw is platform independent).
    """
    digest = _digest(_keyed_hasher(int(seed)), image_id)
    return (int.from_bytes(digest, "little") >> 11) * _INV_2_53


def uniform_from_ids(seed: int, image_ids: Sequence) -> np.ndarray:
    """float64 [n]: `uniform_from_id(seed, id)` of each id, with one conversion of all
    the digests instead of one per id."""
    base = _keyed_hasher(int(seed))
    digests = b"".join([_digest(base, image_id) for image_id in image_ids])
    bits = np.frombuffer(digests, "<u8") >> np.uint64(11)
    return bits.astype(np.float64) * _INV_2_53  # exact: bits < 2^53


@functools.lru_cache(maxsize=16)
def _keyed_hasher(seed: int):
    return hashlib.blake2b(digest_size=8, key=str(seed).encode("ascii"))


def _digest(base, image_id) -> bytes:
    """8-byte BLAKE2b digest of the id (str: UTF-8) under `base`'s key; copying the keyed
    state costs half of keying a new hasher."""
    if isinstance(image_id, str):
        image_id = image_id.encode("utf-8")
    hasher = base.copy()
    hasher.update(image_id)
    return hasher.digest()


def copy_ratio(total: int, num_image: int, use_all: bool = False,
               upsample: bool = True) -> float:
    """Expected copies x of each admitted image of a class with `total` admitted images.

    total == 0 with an admitted image needs a confidence exactly equal to a `max_prob` on
    the grid (it is admitted, p <= max_prob, but its bucket is not counted, GRID[j] <
    max_prob fails, §4.2). The original divides by zero there; we keep such an image once.
    """
    if use_all or total <= 0:
        return 1.0
    x = num_image / total
    return x if upsample else min(x, 1.0)


def copy_count(ratio: float, u: float) -> int:
    """Stochastic rounding: floor(ratio) + (1 if u < ratio - floor(ratio) else 0)."""
    whole = math.floor(ratio)
    return whole + (1 if u < ratio - whole else 0)


class Selector:
    """Copy counts of images under fixed thresholds (one per filter run).

    Args:
      thresholds: per-class `Thresholds` from the reduce step (K classes).
      num_image: target images per class. max_prob: upper confidence bound (inclusive).
      use_all: keep every admitted image exactly once. upsample: allow more than one copy.
      seed: int, keys the per-image draw.
    """

    def __init__(self, thresholds: Thresholds, num_image: int, *, max_prob: float = 2.0,
                 use_all: bool = False, upsample: bool = True, seed: int = 0):
        self.thresholds = np.asarray(thresholds.thresholds, np.float64)
        self.ratios = np.array([copy_ratio(int(n), num_image, use_all, upsample)
                                for n in thresholds.totals], np.float64)
        self.max_prob = float(max_prob)
        self.seed = int(seed)

    @property
    def num_classes(self) -> int:
        return len(self.thresholds)

    def admitted(self, label: int, confidence) -> bool:
        """thresholds[label] <= confidence <= max_prob, in float64 of the float32 value."""
        p = float(np.float32(confidence))  # float64 of the stored float32, as §4.2
        return self.thresholds[label] <= p <= self.max_prob

    def copies(self, label: int, confidence, image_id) -> int:
        """Number of records to write for one image (0 = dropped)."""
        if not self.admitted(label, confidence):
            return 0
        return copy_count(float(self.ratios[label]), uniform_from_id(self.seed, image_id))

    def copies_batch(self, probabilities: np.ndarray, image_ids: Sequence,
                     labels: Optional[np.ndarray] = None, conf: Optional[np.ndarray] = None):
        """probabilities float32 [n, K], n ids -> (labels int64 [n], confidences float32
        [n], copies int64 [n]); row by row the same numbers as `copies_for`. `labels` and
        `conf`, when given, are the argmax classes and their probabilities, already
        computed by the reader (`hist_lib.confidences` otherwise).

        The hash draw is made only for admitted images. ValueError naming the image if a
        confidence is not a finite value >= 0.
        """
        if labels is None or conf is None:
            labels, conf = hist_lib.confidences(probabilities, ids=image_ids)
        else:
            labels = np.asarray(labels, np.int64)
            conf = np.asarray(conf, np.float32)
            check_confidences(conf, ids=image_ids)
        p = conf.astype(np.float64)
        admitted = np.flatnonzero((self.thresholds[labels] <= p) & (p <= self.max_prob))
        copies = np.zeros(len(labels), np.int64)
        if len(admitted):
            ratio = self.ratios[labels[admitted]]
            whole = np.floor(ratio)
            u = uniform_from_ids(self.seed, [image_ids[i] for i in admitted.tolist()])
            copies[admitted] = whole.astype(np.int64) + (u < ratio - whole)
        return labels, conf, copies

    def copies_for(self, probabilities: np.ndarray, image_id):
        """probabilities [K] -> (label, confidence float32, copies)."""
        probabilities = np.asarray(probabilities, np.float32)
        label = int(np.argmax(probabilities))
        conf = probabilities[label]
        check_confidences(np.array([conf]), f"confidence of image {image_id!r}")
        return label, conf, self.copies(label, conf, image_id)


class Shuffler:
    """The bounded shuffle of `shuffled`, fed a list at a time (no per-item generator
    frames: the filter pushes one batch of records per call).

        shuffler = Shuffler(buffer_size, rng)
        for batch in ...: write(shuffler.push(batch))   # items leaving the buffer
        write(shuffler.drain())                          # the rest, in random order
    """

    def __init__(self, buffer_size: int, rng: np.random.Generator, draws: int = 4096):
        self.buffer_size = int(buffer_size)
        self._rng = rng
        self._draws = draws
        self._buffer = []
        self._slots = []
        self._next = 0

    def push(self, items: Sequence[T]) -> list:
        if self.buffer_size <= 1:
            return list(items)
        buffer, size = self._buffer, self.buffer_size
        slots, next_slot = self._slots, self._next
        out = []
        for item in items:
            if len(buffer) < size:
                buffer.append(item)
                continue
            if next_slot == len(slots):
                # One NumPy call per draw would cost more than the rest of the loop.
                slots = self._rng.integers(size, size=self._draws).tolist()
                next_slot = 0
            i = slots[next_slot]
            next_slot += 1
            out.append(buffer[i])
            buffer[i] = item
        self._slots, self._next = slots, next_slot
        return out

    def drain(self) -> list:
        buffer, self._buffer = self._buffer, []
        return [buffer[i] for i in self._rng.permutation(len(buffer)).tolist()]


def shuffled(items: Iterable[T], buffer_size: int, rng: np.random.Generator,
             draws: int = 4096) -> Iterator[T]:
    """Yields `items` in a random order using at most `buffer_size` of them in memory.

    Same scheme as `tf.data.Dataset.shuffle`: once the buffer is full, each new item
    replaces a uniformly chosen buffered one, which is emitted; the rest is emitted in a
    random order at the end. Duplicates written back to back therefore spread over about
    `buffer_size` records (the original shuffled disjoint 10K chunks, §11). The slot
    indices are drawn `draws` at a time. buffer_size <= 1 keeps the input order.
    """
    shuffler = Shuffler(buffer_size, rng, draws)
    for item in items:
        yield from shuffler.push((item,))
    yield from shuffler.drain()


def final_stats(shard_counts: Iterable[Mapping[str, int]], num_classes: int) -> Dict:
    """Per-shard {"<class>": copies} dicts -> `final_stats.json` content (§4.5).

    {"cat_count": {class: copies} for all K classes, "cat_sorted_pairs": [[class, count]]
    by descending count (ties by class id), "total_cnt": Σ}.
    """
    totals = np.zeros(num_classes, np.int64)
    for counts in shard_counts:
        for key, n in counts.items():
            totals[int(key)] += int(n)
    pairs = sorted(((str(c), int(n)) for c, n in enumerate(totals)),
                   key=lambda kv: (-kv[1], int(kv[0])))
    return {"cat_count": {c: n for c, n in pairs},
            "cat_sorted_pairs": [[c, n] for c, n in pairs],
            "total_cnt": int(totals.sum())}


def counts_to_json(counts: np.ndarray) -> Dict[str, int]:
    """int [K] copies per class -> {"<class>": n} for classes with n > 0 (stats_*.json)."""
    return {str(c): int(n) for c, n in enumerate(np.asarray(counts)) if n > 0}


def shard_rng(seed: int, shard: int, task: int) -> np.random.Generator:
    """The output-shuffle RNG of one (shard, task): reproducible, independent per shard.
    seed, shard, task must be >= 0."""
    return np.random.default_rng([int(seed), int(shard), int(task)])
