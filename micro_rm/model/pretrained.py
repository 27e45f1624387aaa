"""Hugging Face-style model folders: ``config.json`` + ``model.safetensors`` + a model card.

``save_pretrained`` swaps a whole new folder into place, so a crash never leaves a half-written
model; ``from_pretrained`` rebuilds the model from the folder alone. ``MixtureRewardModel`` gets
these verbs from :class:`PretrainedMixin`, so this module never imports it (no import cycle).

>>> model = MixtureRewardModel(MixtureConfig(num_heads=2, reward_dim=3, route_dim=3))  # doctest: +SKIP
>>> model.save_pretrained("runs/demo")                         # doctest: +SKIP
>>> MixtureRewardModel.from_pretrained("runs/demo")            # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save

from micro_rm import __version__
from micro_rm.atomic import json_default, temp_folder
from micro_rm.data.readers import hub_id
from micro_rm.errors import MicroRMError
from micro_rm.model.card import model_card
from micro_rm.model.config import MixtureConfig
from micro_rm.model.hub import CARD_NAME, push_to_hub

if TYPE_CHECKING:
    from micro_rm.model.mixture import MixtureRewardModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class PretrainedMixin:
    """The model folder verbs of :class:`~micro_rm.model.mixture.MixtureRewardModel`."""

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write ``config.json``, ``model.safetensors`` and a model card ``README.md`` into the
        folder ``path`` (created or replaced as a whole); returns it.

        Only an empty folder or a model folder is replaced, so a mistyped ``--out`` wipes nothing else.
        Whenever the process dies, ``path`` holds the old model or the new one: the new folder is
        written and fsynced beside it, then swapped in (:func:`_swap_in`); the next save to the same
        place removes what a killed save left.
        """
        path = check_destination(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(path)
        tmp = temp_folder(path.parent, prefix=f".{path.name}.{os.getpid()}.")   # 0755 under umask 022
        try:
            (tmp / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2, default=json_default)
                                           + "\n", encoding="utf-8")
            tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            # Bytes written here, not save_file: it writes through a 0600 temporary file, ignoring the umask.
            (tmp / WEIGHTS_NAME).write_bytes(save(tensors, metadata={"format": "pt", "library": "micro-rm"}))
            (tmp / CARD_NAME).write_text(model_card(self.config), encoding="utf-8")
            for file in (tmp / CONFIG_NAME, tmp / WEIGHTS_NAME, tmp / CARD_NAME, tmp):
                _fsync(file)
            _swap_in(tmp, path)        # afterwards `tmp` holds the old model, or nothing
            _fsync(path.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, device: Optional[str] = None, *,
                        revision: Optional[str] = None, token: Optional[str | bool] = None) -> "MixtureRewardModel":
        """Rebuild a saved model from a local folder, or download one from the Hugging Face hub (``owner/name``,
        at ``revision``: a branch, tag or commit; ``token`` for a private repo, default the login's).
        Every field of ``config.json`` is checked, and another major micro-rm version is refused.
        """
        folder = _resolve(str(path_or_hub_id), revision=revision, token=token)
        config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        for file in (config_file, weights_file):
            if not file.is_file():
                raise MicroRMError(f"{folder}: no {file.name}; is this a folder written by save_pretrained?")
        try:
            data = json.loads(config_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MicroRMError(f"{config_file}: not valid JSON ({exc})") from None
        if isinstance(data, dict) and isinstance(data.get("version"), str):
            _check_version(data["version"], config_file)
        model = cls(MixtureConfig.from_dict(data, where=str(config_file)))
        try:
            tensors = load_file(str(weights_file))
        except Exception as exc:  # safetensors raises its own error types for a corrupt file
            raise MicroRMError(f"{weights_file}: not a readable safetensors file ({exc})") from None
        expected = model.state_dict()
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise MicroRMError(f"{weights_file}: tensors do not match {config_file.name} "
                               f"(missing: {missing or 'none'}, unexpected: {unexpected or 'none'})")
        for name, tensor in tensors.items():
            if tensor.shape != expected[name].shape:
                raise MicroRMError(f"{weights_file}: tensor `{name}` has shape {tuple(tensor.shape)}, but "
                                   f"{config_file.name} implies {tuple(expected[name].shape)}")
            _check_finite(name, tensor, weights_file)
        model.load_state_dict(tensors)
        return model.to(device or "cpu").eval()

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload this model to the Hugging Face Hub (see :func:`micro_rm.model.hub.push_to_hub`:
        ``token``, ``revision``, ``private``, ``commit_message``, ``create_pr``, ``license``)."""
        return push_to_hub(self, repo_id, **kwargs)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # linux/fcntl.h, linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux's ``renameat2(RENAME_EXCHANGE)``; False where that
    is not available (another OS, an old kernel, a file system without it)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _swap_in(new: Path, path: Path) -> None:
    """Put the folder ``new`` at ``path``; the old ``path`` (if any) ends up at ``new``.

    An existing model is swapped with one atomic exchange; where that is missing, it is first
    renamed to a ``.old`` sibling, which :func:`clean_stale_temps` renames back after a kill.
    """
    if not path.exists():
        os.replace(new, path)
        return
    if _exchange(new, path):
        return
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    os.replace(path, old)
    os.replace(new, path)
    os.replace(old, new)           # so the caller removes it with the temporary folder


def clean_stale_temps(path: str | os.PathLike) -> None:
    """Remove the temporary folders that killed saves to ``path`` left beside it (those of
    processes that are gone), and restore a model moved aside if ``path`` itself is missing."""
    path = Path(path)
    for leftover in sorted(path.parent.glob(f".{glob.escape(path.name)}.*")):
        parts = leftover.name[len(path.name) + 2:].split(".")
        if len(parts) < 2 or not parts[0].isdigit() or parts[-1] not in ("tmp", "old") \
                or _alive(int(parts[0])):
            continue
        if parts[-1] == "old" and not path.exists():
            os.replace(leftover, path)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True        # another save of this process may be running
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass               # it exists, owned by another user
    return True


def check_destination(path: str | os.PathLike) -> Path:
    """Refuse a destination that exists and is neither empty nor a model folder (call it before
    long work, so a bad ``--out`` fails first)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / CONFIG_NAME).exists())):
        raise MicroRMError(f"{path}: exists and is not a micro-rm model folder; choose a new or empty folder")
    return path


def _check_finite(name: str, tensor: torch.Tensor, weights_file: Path) -> None:
    """Refuse a NaN or infinite parameter: it would turn every reward into NaN. The one exception
    is −inf in ``logits``, a head that :func:`export_scalar` switched off (weight exactly 0)."""
    bad = ~torch.isfinite(tensor)
    if name == "logits":
        bad &= tensor != float("-inf")
    if bool(bad.any()):
        raise MicroRMError(f"{weights_file}: tensor `{name}` holds {int(bad.sum())} NaN or infinite "
                           "value(s); the model is damaged: retrain it or restore the file")


def export_scalar(model: "MixtureRewardModel", path: str | os.PathLike, *,
                  weights: Optional[Sequence[float]] = None, route: Optional[np.ndarray] = None,
                  context: Optional[str] = None) -> "MixtureRewardModel":
    """Save a copy of ``model`` with one fixed weight vector over its heads, for tools that want
    one reward per response: a ``static`` model with logits log w (``shared-base`` priors folded
    into the heads). Give either ``weights`` (K non-negative numbers, normalised here) or
    ``route`` (one router feature vector [d_r] whose routing is frozen in); ``context`` is only
    recorded in the config.
    """
    k = model.config.num_heads
    if (weights is None) == (route is None):
        raise MicroRMError("export_scalar: give exactly one of `weights` or `route` (a context)")
    if route is not None:
        w = model.router_weights(np.asarray(route, dtype=np.float32).reshape(1, -1))[0].astype(np.float64)
    else:
        w = np.asarray(list(weights), dtype=np.float64)
        if w.shape != (k,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise MicroRMError(f"export_scalar: `weights` must be {k} non-negative numbers with a positive "
                               f"sum (one per head), got {list(weights)}")
    w = w / w.sum()
    exported = {"weights": w.tolist(), "context": context, "from_variant": model.config.variant}
    config = dataclasses.replace(model.config, variant="static", version=__version__,
                                 training={**model.config.training, "exported": exported})
    scalar = type(model)(config)
    with torch.no_grad(), np.errstate(divide="ignore"):
        scalar.heads.weight.copy_(model.head_weight())
        scalar.logits.copy_(torch.from_numpy(np.log(w)))        # log 0 = −inf: a head switched off
    scalar.save_pretrained(path)
    return scalar.eval()


def _resolve(path_or_hub_id: str, *, revision: Optional[str] = None, token: Optional[str | bool] = None) -> Path:
    path = Path(path_or_hub_id)
    if revision is not None and path.exists():
        raise MicroRMError(f"{path}: revision={revision!r} applies to hub ids only; this is a local folder")
    if not path.exists() and path.parent.is_dir():
        clean_stale_temps(path)     # a save killed between its two renames moved the model aside
    if path.is_dir():
        return path
    if path.exists():
        raise MicroRMError(f"{path}: is a file; give the model folder (the one with {CONFIG_NAME})")
    if hub_id(path_or_hub_id) is None:
        raise MicroRMError(f"{path_or_hub_id}: no such model folder (and not a hub id like owner/name)")
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo_id=path_or_hub_id, revision=revision, token=token))
    except Exception as exc:  # offline, unknown repo or revision, auth: all mean "could not get it"
        at = f" at revision {revision!r}" if revision else ""
        raise MicroRMError(f"{path_or_hub_id}: no such local folder, and downloading it{at} from the Hugging "
                           f"Face hub failed ({type(exc).__name__}); check the id, the revision, the token "
                           "and the network, or pass a local folder") from None


def _check_version(version: str, where: Path) -> None:
    major, ours = version.split(".")[0], __version__.split(".")[0]
    if major != ours:
        raise MicroRMError(f"{where}: written by micro-rm {version}, which is incompatible with this "
                           f"micro-rm {__version__} (major version {major} ≠ {ours}); install micro-rm "
                           f"{major}.x to load it, or retrain the model")
