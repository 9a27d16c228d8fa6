"""ralbook: a workbook for partially relevant video retrieval with RAL on GMMFormer v2."""

__version__ = "0.1.0"

from ralbook.runtime import prefer_short_spin as _prefer_short_spin

# Idle OpenMP threads spin only briefly before they sleep (set before torch loads; see ralbook.runtime).
_prefer_short_spin()
