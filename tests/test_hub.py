"""Hub conventions without the network: push_to_hub uploads the save_pretrained folder with a
model card carrying full metadata (through a fake HfApi), from_pretrained passes revision and
token to snapshot_download, and a bad repo id or a failed upload is one clear error."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from micro_rm.errors import MicroRMError
from test_serve import build_model


class FakeHub:
    """Stands in for the Hub: keeps each upload as a folder per (repo, revision)."""

    def __init__(self, root: Path):
        self.root, self.calls = root, []

    def api_class(self):
        """A stand-in for huggingface_hub.HfApi writing into this fake hub."""
        hub = self

        class FakeApi:
            def __init__(self, token=None):
                self.token = token

            def create_repo(self, repo_id, **kw):
                hub.calls.append(("create_repo", repo_id, self.token, kw))

            def create_branch(self, repo_id, branch, **kw):
                hub.calls.append(("create_branch", repo_id, branch))

            def upload_folder(self, repo_id, folder_path, revision=None, **kw):
                shutil.copytree(folder_path, hub.root / repo_id / (revision or "main"), dirs_exist_ok=True)
                hub.calls.append(("upload_folder", repo_id, revision, kw["commit_message"]))
                return f"https://huggingface.co/{repo_id}/commit/0"
        return FakeApi


@pytest.fixture
def hub(tmp_path, monkeypatch):
    import huggingface_hub

    fake = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub, "HfApi", fake.api_class())

    def snapshot_download(repo_id, revision=None, token=None, **kw):
        fake.calls.append(("snapshot_download", repo_id, revision, token))
        folder = fake.root / repo_id / (revision or "main")
        if not folder.is_dir():
            raise FileNotFoundError(f"{repo_id}@{revision}")
        return str(folder)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return fake


def trained_model():
    model = build_model()
    model.config.data = {"source": "openbmb/UltraFeedback", "pairs": 12}
    model.config.metrics = {"train_loss": 0.61, "val_loss": 0.64, "best_epoch": 3}
    return model


def test_push_to_hub_then_from_pretrained_at_a_revision(hub):
    from huggingface_hub import ModelCard

    from micro_rm.model import MixtureRewardModel

    model = trained_model()
    assert model.push_to_hub("me/micro-rm-test", token="hf_secret", revision="v1", private=True) \
        == "https://huggingface.co/me/micro-rm-test/commit/0"
    assert ("create_repo", "me/micro-rm-test", "hf_secret", {"repo_type": "model", "private": True,
                                                              "exist_ok": True}) in hub.calls
    assert ("create_branch", "me/micro-rm-test", "v1") in hub.calls
    card = ModelCard.load(hub.root / "me/micro-rm-test/v1/README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "micro-rm" and data["license"] == "apache-2.0"
    assert data["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert data["datasets"] == ["openbmb/UltraFeedback"]
    results = data["model-index"][0]["results"]
    assert data["model-index"][0]["name"] == "me/micro-rm-test"
    assert {m["type"]: m["value"] for r in results for m in r["metrics"]} == {"train_loss": 0.61, "val_loss": 0.64}
    assert 'MiCRo.load("me/micro-rm-test")' in card.text and "rm.score(" in card.text
    loaded = MixtureRewardModel.from_pretrained("me/micro-rm-test", revision="v1", token="hf_secret")
    assert ("snapshot_download", "me/micro-rm-test", "v1", "hf_secret") in hub.calls
    x = np.random.default_rng(0).normal(size=(4, model.config.reward_dim)).astype(np.float32)
    np.testing.assert_allclose(loaded.rewards(x), model.rewards(x), rtol=1e-6)
    with pytest.raises(MicroRMError, match="downloading it at revision 'v2' from the Hugging Face hub failed"):
        MixtureRewardModel.from_pretrained("me/micro-rm-test", revision="v2")


def test_hub_errors_are_one_clear_line(hub, tmp_path, monkeypatch):
    import huggingface_hub

    from micro_rm.model import MixtureRewardModel
    from micro_rm.model.hub import push_to_hub

    model = trained_model()
    with pytest.raises(MicroRMError, match="is not a Hub repo id; use owner/name"):
        push_to_hub(model, "no-owner")

    class Refusing:
        def __init__(self, token=None):
            pass

        def create_repo(self, *a, **kw):
            raise PermissionError("401 Unauthorized\nmore detail")
    monkeypatch.setattr(huggingface_hub, "HfApi", Refusing)
    with pytest.raises(MicroRMError, match="PermissionError: 401 Unauthorized\\); log in with `hf auth login`"):
        push_to_hub(model, "me/micro-rm-test")
    model.save_pretrained(tmp_path / "local")
    with pytest.raises(MicroRMError, match="revision='v1' applies to hub ids only"):
        MixtureRewardModel.from_pretrained(str(tmp_path / "local"), revision="v1")


def test_the_saved_card_has_metadata_and_a_text_in_example(tmp_path):
    from huggingface_hub import ModelCard

    trained_model().save_pretrained(tmp_path / "m")
    card = ModelCard.load(tmp_path / "m" / "README.md")
    assert card.data.license == "apache-2.0" and card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert "from micro_rm import MiCRo" in card.text and "micro-rm score --model" in card.text
