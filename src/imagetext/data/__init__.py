"""Dataset readers: image-caption pairs from the formats users have (see readers.py)."""

from imagetext.data.dataset import BadRow, Pair, PairDataset, holdout_split, merge_datasets
from imagetext.data.readers import FORMATS, DatasetFormatError, detect_format, read_many, read_pairs

__all__ = [
           "FORMATS",
           "BadRow",
           "DatasetFormatError",
           "Pair",
           "PairDataset",
           "detect_format",
           "holdout_split",
           "merge_datasets",
           "read_many",
           "read_pairs",
]
