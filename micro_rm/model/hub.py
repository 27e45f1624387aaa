"""Share a model on the Hugging Face Hub: ``push_to_hub`` uploads the ``save_pretrained`` folder
as one commit; ``from_pretrained`` downloads it back. Not ``PyTorchModelHubMixin``: its
``from_pretrained`` would bypass the checks of our folder format (version, config, shapes, backbone).

>>> push_to_hub(model, "me/micro-rm-dsp", private=True)                 # doctest: +SKIP
CommitInfo(commit_url='https://huggingface.co/me/micro-rm-dsp/commit/...', ...)
>>> MixtureRewardModel.from_pretrained("me/micro-rm-dsp", revision="main")  # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional

from micro_rm.errors import MicroRMError

CARD_NAME = "README.md"   # the model card of a model folder


def push_to_hub(model: Any, repo_id: str, *, token: Optional[str | bool] = None, revision: Optional[str] = None,
                private: Optional[bool] = None, commit_message: str = "Upload MiCRo reward model",
                create_pr: bool = False, license: Optional[str] = None) -> Any:
    """Upload ``model`` to the model repo ``repo_id`` (created if missing) as one commit on
    ``revision`` (a branch, created from main if missing; default main). Returns the
    ``huggingface_hub`` commit info. ``token`` defaults to the logged-in one (``hf auth login``);
    ``license`` goes into the model card (default: the config's, else apache-2.0)."""
    from huggingface_hub import HfApi

    from micro_rm.data.readers import hub_id
    from micro_rm.model.card import model_card

    if hub_id(repo_id) is None:
        raise MicroRMError(f"repo_id {repo_id!r} is not a Hub repo id; use owner/name, e.g. me/micro-rm-dsp")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="micro-rm-push-") as tmp:
        folder = model.save_pretrained(Path(tmp) / "model")
        (folder / CARD_NAME).write_text(model_card(model.config, repo_id=repo_id, license=license),
                                        encoding="utf-8")
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            if revision is not None:
                api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
            return api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                     revision=revision, commit_message=commit_message, create_pr=create_pr)
        except Exception as exc:  # auth, network, permissions: the Hub's message says which
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise MicroRMError(f"pushing to the Hugging Face Hub repo {repo_id} failed ({type(exc).__name__}: "
                               f"{first}); log in with `hf auth login` or pass token=, and check the "
                               "repo id and your write access") from None
