"""ralbook: a workbook for partially relevant video retrieval with RAL on GMMFormer v2."""

__version__ = "0.1.0"

