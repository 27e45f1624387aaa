"""Pair records: validation, readers for files and Hugging Face datasets, builders, splits."""

from micro_rm.data.readers import read_pairs, read_rows, write_pairs
from micro_rm.data.records import normalize_pair, render_text
from micro_rm.data.split import select_split, split_of

__all__ = ["normalize_pair", "read_pairs", "read_rows", "render_text", "select_split",
           "split_of", "write_pairs"]
