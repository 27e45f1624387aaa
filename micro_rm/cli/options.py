"""Options that several commands share, declared once: ``as_json: JsonFlag = False``."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from micro_rm.features.base import check_device
from micro_rm.online.hedge import validate_eta

DATA_HELP = "Pair file (jsonl, json, parquet, csv), dataset folder or Hugging Face hub id."
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line.")]
HfSplit = Annotated[Optional[str], typer.Option("--hf-split", help=(
    "Split to read from a Hugging Face dataset (hub id or folder) with several, e.g. test_prefs "
    "(default: the only one, or train)."))]
CacheDir = Annotated[Optional[Path], typer.Option(
    "--cache", help="Feature cache folder (default: $MICRO_RM_CACHE or the user cache dir).")]
CacheOnly = Annotated[bool, typer.Option(
    "--cache-only", help="Fail instead of encoding texts that are not in the cache yet.")]
ModelDir = Annotated[str, typer.Option("--model", help="Model folder (or Hugging Face hub id).")]
Device = Annotated[str, typer.Option("--device", callback=check_device, help="Torch device: cpu, cuda, cuda:N or mps.")]
BackboneName = Annotated[str, typer.Option(
    "--backbone", help="Backbone: default, static, a Hugging Face model id or a local folder.")]
Eta = Annotated[float, typer.Option("--eta", callback=validate_eta, help=(
    "Hedge learning rate η > 0 of a user's weights (the service's --eta): after n pairs, two heads whose "
    "summed scaled losses differ by Δ have their weight ratio moved by exp(−η·Δ) away from the router's. "
    "The default, log(1/p_min) = 4, is the exact Bayesian posterior over heads."))]
Dtype = Annotated[str, typer.Option("--dtype", help=(
    "Backbone compute dtype: float32, bfloat16, float16, or auto (bfloat16 for a decoder on CUDA, else "
    "float32). Part of the cache key: train with the one the features were encoded with."))]
MaxLength = Annotated[Optional[int], typer.Option(
    "--max-length", help="Truncate each item to this many tokens (default: the backbone's limit).")]
