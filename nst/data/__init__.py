"""Record formats, sharded atomic writers and validating readers (spec §3, §5.1).

  schema   every TFRecord record format by name: encode (Python -> bytes) and parse
           (serialized -> dict of tensors)
  writers  original file names, shard boundaries, atomic (temp + rename) shard writing
  readers  glob/sort/shard/interleave of shards into located, validated records
"""

from nst.data.schema import (FORMATS, LABELED, PREDICTION, PSEUDO_LABELED, UNLABELED,
                             RecordFormat, encode_labeled, encode_prediction,
                             encode_pseudo_labeled, encode_unlabeled, get_format)
from nst.data.readers import (SkippedRecords, list_files, list_unlabeled_files,
                              read_examples, read_records, shard_files)
from nst.data.writers import (ShardWriter, filtered_path, info_name, prediction_name,
                              shard_boundaries, shard_name, task_shard_name, write_records,
                              write_shards)
