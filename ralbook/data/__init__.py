"""Layer 3, data: the release layout, feature stores, collections, datasets and the demo generator.

``from ralbook.data import Collection`` (and the other names of the former flat ``ralbook/data.py``)
keeps working: a package cannot sit next to a module of the same name, so it re-exports them.
"""
from ralbook.data.collection import (DEFAULT_FEATURES, SPLITS, CaptionFile, Collection, CollectionSummary,
                                     SplitSummary, caption_leaks, video_of)
from ralbook.data.datasets import (QueryDataset, TrainDataset, VideoDataset, collate_queries, collate_train,
                                   collate_videos)
from ralbook.data.features import bin_rows, convert_bin_to_hdf5, l2_normalize, query_input, video_inputs

__all__ = ["Collection", "CollectionSummary", "SplitSummary", "TrainDataset", "VideoDataset", "QueryDataset",
           "collate_train", "collate_videos", "collate_queries", "bin_rows", "video_inputs", "query_input",
           "l2_normalize", "convert_bin_to_hdf5", "caption_leaks", "DEFAULT_FEATURES", "SPLITS", "video_of",
           "CaptionFile"]
