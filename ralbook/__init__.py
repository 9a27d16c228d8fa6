"""ralbook: a workbook for partially relevant video retrieval with RAL on GMMFormer v2."""

__version__ = "0.1.0"

from ralbook.runtime import prefer_passive_wait as _prefer_passive_wait

# Idle OpenMP threads sleep instead of spinning (set before torch loads; see ralbook.runtime).
_prefer_passive_wait()
