"""Pseudo-label filtering and class balancing (spec §4), local version.

  histogram  0.01-grid confidence histograms [K, 101], per-class thresholds (pure)
  select     seeded per-image copy counts, bounded shuffling, final stats (pure)
  layout     where the input of one (shard, task) is (two layouts), its count checks
  parsers    the reader's record parsers (fast fixed-length, and schema-checked)
  reader     the input files in numpy batches, naming bad records; pass 1's input
  join       pass 2's input: images joined with their predictions by id
  filter_config
             the settings (FilterConfig), their flags, the output files' names
  filter     the four file-level steps: write_shard_histogram, reduce_histograms,
             select_shard, finalize_stats (atomic outputs, no polling)

`nst.filter_unlabel` is the command line; a Beam pipeline can reuse `histogram` and
`select` unchanged (histograms add up, copy counts depend only on (seed, image id)).
"""

from nst.pseudo.filter import (compute_shard_histogram, finalize_stats, load_thresholds,
                               missing_histograms, missing_stats, reduce_histograms,
                               select_shard, write_shard_histogram)
from nst.pseudo.filter_config import FilterConfig
# Not the function `histogram.histogram`: re-exporting it would shadow the submodule.
from nst.pseudo.histogram import (GRID, NUM_BUCKETS, Thresholds, bucket_indices,
                                  choose_threshold, choose_thresholds,
                                  probabilities_histogram)
from nst.pseudo.join import (Item, ItemBatch, PredictionOrderMismatch, joined_batches,
                             joined_items)
from nst.pseudo.layout import InputLayout
from nst.pseudo.select import Selector, copy_count, copy_ratio, uniform_from_id
