"""--hf-split and datasets objects: a dataset with train_prefs / test_prefs (the
ultrafeedback_binarized layout) is never read silently from one split; the split is chosen with
--hf-split / hf_split=, and read_pairs takes Dataset and DatasetDict objects."""

from __future__ import annotations

import json

import pytest

from micro_rm.cli.app import main
from micro_rm.data.readers import read_pairs
from micro_rm.errors import MicroRMError
from test_serve import BAD, GOOD, PROMPT, build_model


def rows(tag: str, n: int = 3) -> list[dict]:
    return [{"prompt": f"{PROMPT} ({tag} {i})", "chosen": GOOD, "rejected": BAD} for i in range(n)]


@pytest.fixture
def prefs(tmp_path):
    """A DatasetDict saved with save_to_disk: train_prefs (3 rows) and test_prefs (2 rows)."""
    from datasets import Dataset, DatasetDict

    dd = DatasetDict({"train_prefs": Dataset.from_list(rows("train")), "test_prefs": Dataset.from_list(rows("test", 2))})
    dd.save_to_disk(str(tmp_path / "prefs"))
    return tmp_path / "prefs", dd


def test_an_ambiguous_split_is_an_error_that_lists_the_splits(prefs):
    folder, _ = prefs
    with pytest.raises(MicroRMError, match="has splits train_prefs, test_prefs and none is called train; "
                                           "choose one with --hf-split"):
        read_pairs(folder)
    assert [r["prompt"] for r in read_pairs(folder, hf_split="test_prefs")] == [r["prompt"] for r in rows("test", 2)]
    with pytest.raises(MicroRMError, match="no split 'test'; it has train_prefs, test_prefs"):
        read_pairs(folder, hf_split="test")


def test_read_pairs_takes_dataset_objects(prefs):
    _, dd = prefs
    assert len(read_pairs(dd["train_prefs"])) == 3
    assert len(read_pairs(dd, hf_split="test_prefs")) == 2
    with pytest.raises(MicroRMError, match="dataset: has splits train_prefs, test_prefs"):
        read_pairs(dd)


def test_commands_read_the_split_they_are_told(prefs, tmp_path, capsys):
    folder, _ = prefs
    build_model().save_pretrained(tmp_path / "model")
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--model", str(tmp_path / "model"), "--data", str(folder), "--out", str(out)]) == 2
    assert "has splits train_prefs, test_prefs" in capsys.readouterr().err and not out.exists()
    assert main(["score", "--model", str(tmp_path / "model"), "--data", str(folder), "--out", str(out),
                 "--hf-split", "test_prefs"]) == 0
    assert len(out.read_text().splitlines()) == 2
    pairs = tmp_path / "pairs.jsonl"
    assert main(["data", "build", "jsonl", "--source", str(folder), "--hf-split", "train_prefs",
                 "--out", str(pairs)]) == 0
    assert [json.loads(line)["prompt"] for line in pairs.read_text().splitlines()] == [r["prompt"] for r in rows("train")]
    assert main(["data", "inspect", str(folder), "--hf-split", "test_prefs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["pairs"] == 2


def test_featurize_takes_a_dataset_of_records(prefs, tmp_path):
    """A Dataset of pair records featurizes like the same records as a list (read_pairs first for
    datasets in another schema, e.g. whole conversations without a prompt column)."""
    import numpy as np

    from micro_rm.features.backbones import load_backbone
    from micro_rm.features.cache import FeatureCache
    from micro_rm.features.featurize import featurize

    _, dd = prefs
    backbone, cache = load_backbone("static"), FeatureCache(tmp_path / "cache")
    from_dataset, _ = featurize(dd["train_prefs"], backbone, cache, progress=False)
    from_list, _ = featurize(read_pairs(dd["train_prefs"]), backbone, cache, progress=False)
    for name in ("chosen", "rejected", "route"):
        np.testing.assert_array_equal(getattr(from_dataset, name), getattr(from_list, name))
