"""Backbones: pooling, padding, truncation, fingerprints and errors, on tiny random models built
here (BERT-like encoder, Llama-like decoder), plus the real ``default`` and ``static``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (AutoModel, AutoTokenizer, BertConfig, BertModel, LlamaConfig,
                          LlamaForCausalLM)

from micro_rm.errors import MicroRMError
from micro_rm.features.backbones import fingerprint_id, load_backbone
from micro_rm.features.backbones.items import tokenize_items
from micro_rm.features.backbones.sources import default_model_dir
from micro_rm.features.backbones.transformer import ensure_pad_token

CHAT_TEMPLATE = ("{% for m in messages %}[CLS]{{ m['role'] }}: {{ m['content'] }}[SEP]{% endfor %}"
                 "{% if add_generation_prompt %}[CLS]assistant:{% endif %}")
NO_SYSTEM_TEMPLATE = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system') }}"
                      "{% endif %}" + CHAT_TEMPLATE)

PROMPTS = ["What is the capital of France?", "Explain photosynthesis to a child in two sentences.",
           [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Tell me a joke about cats."}]]
RESPONSES = ["Paris.", "Plants eat sunlight and breathe out the air we need.",
             "Why did the cat sit on the computer? To keep an eye on the mouse."]


def _minilm_tokenizer():
    return AutoTokenizer.from_pretrained(default_model_dir())


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A 2-layer, 32-wide random BERT with the MiniLM WordPiece tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = _minilm_tokenizer()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=37, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _save_llama(folder, chat_template: str):
    """A 2-layer random Llama whose tokenizer pads with its EOS, as many decoders do."""
    tokenizer = _minilm_tokenizer()
    tokenizer.eos_token = tokenizer.pad_token = "[SEP]"
    tokenizer.chat_template = chat_template
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return _save_llama(tmp_path_factory.mktemp("tiny-llama"), CHAT_TEMPLATE)


def _reward_items(backbone):
    return [backbone.reward_item(p, r) for p, r in zip(PROMPTS, RESPONSES)]


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_batch_equals_one_by_one(kind, bert_dir, llama_dir):
    backbone = load_backbone(str(bert_dir if kind == "bert" else llama_dir))
    assert backbone.pooling == ("mean" if kind == "bert" else "last")
    routes = [backbone.route_item(p, "The user is a child.") for p in PROMPTS]
    items = _reward_items(backbone) + routes
    batched = backbone.encode(items)
    single = np.concatenate([backbone.encode([item]) for item in items])
    assert batched.shape == (len(items), 32) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_left_and_right_padding_give_the_same_last_token_vectors(llama_dir):
    backbone = load_backbone(str(llama_dir))
    items = _reward_items(backbone)
    backbone.tokenizer.padding_side = "right"
    right = backbone.encode(items)
    backbone.tokenizer.padding_side = "left"
    left = backbone.encode(items)
    np.testing.assert_allclose(left, right, atol=1e-5)


def test_pad_id_equal_to_eos_still_pools_the_true_last_token(llama_dir):
    backbone = load_backbone(str(llama_dir))
    tokenizer = backbone.tokenizer
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    items = _reward_items(backbone)
    model = AutoModel.from_pretrained(llama_dir).eval()
    expected = []
    for first, second in items:
        ids = tokenizer(first, second, add_special_tokens=False)["input_ids"]
        assert ids[-1] == tokenizer.eos_token_id  # a pad-id search would stop too early
        with torch.inference_mode():
            expected.append(model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1].numpy())
    np.testing.assert_allclose(backbone.encode(items), np.stack(expected), atol=1e-5)


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_long_prompt_does_not_cut_the_response_away(kind, bert_dir, llama_dir):
    backbone = load_backbone(str(bert_dir if kind == "bert" else llama_dir), max_length=32)
    prompt = "please summarise this long document " * 60
    items = [backbone.reward_item(prompt, "the cat sat on the mat"),
             backbone.reward_item(prompt, "quantum chromodynamics lecture notes")]
    assert backbone.token_lengths(items) == [32, 32]
    ids = tokenize_items(backbone.tokenizer, items, max_length=32,
                         add_special_tokens=kind == "bert")[0]["input_ids"]
    assert "mat" in backbone.tokenizer.convert_ids_to_tokens(ids)
    first, second = backbone.encode(items)
    assert not np.allclose(first, second, atol=1e-4)


def test_fingerprint_tracks_settings_and_its_spec_rebuilds_the_backbone(bert_dir):
    backbones = [load_backbone(str(bert_dir), max_length=16),
                 load_backbone(str(bert_dir), max_length=32),
                 load_backbone(str(bert_dir), max_length=32, pooling="last")]
    ids = {fingerprint_id(b.fingerprint()) for b in backbones}
    assert len(ids) == 3
    for backbone in backbones:
        spec = backbone.fingerprint()["spec"]
        rebuilt = load_backbone(**spec, batch_size=2)
        assert rebuilt.fingerprint() == backbone.fingerprint()
        items = _reward_items(backbone)
        np.testing.assert_allclose(rebuilt.encode(items), backbone.encode(items), atol=1e-5)


def test_decoder_route_item_ends_at_the_assistant_header(llama_dir):
    backbone = load_backbone(str(llama_dir))
    text, second = backbone.route_item("Hi", context="Be brief.")
    assert second is None
    assert text == "[CLS]system: Be brief.[SEP][CLS]user: Hi[SEP][CLS]assistant:"


def test_decoder_separate_layout_encodes_the_context_as_its_system_message(llama_dir):
    from micro_rm.features.featurize import route_items

    backbone = load_backbone(str(llama_dir))
    assert backbone.context_item("Be brief.") == ("[CLS]system: Be brief.[SEP]", None)
    prompt, context = route_items(backbone, "Hi", "Be brief.")
    assert prompt == ("[CLS]user: Hi[SEP][CLS]assistant:", None) and context == backbone.context_item("Be brief.")
    views = route_items(backbone, "Hi", "Be brief, use plain words.")[1:]      # clauses: each its own system message
    assert views == [backbone.context_item(v) for v in ("Be brief, use plain words.", "Be brief", "use plain words")]


def test_template_without_system_role_gets_the_context_in_the_user_turn(tmp_path):
    backbone = load_backbone(str(_save_llama(tmp_path, NO_SYSTEM_TEMPLATE)))
    text, _ = backbone.route_item("Hi", context="Be brief.")
    assert text == "[CLS]user: Be brief.\n\nHi[SEP][CLS]assistant:"


def test_missing_pad_token_is_not_eos():
    tokenizer = _minilm_tokenizer()
    tokenizer.eos_token, tokenizer.pad_token = "[SEP]", None
    ensure_pad_token(tokenizer)
    assert tokenizer.pad_token is not None and tokenizer.pad_token != tokenizer.eos_token


def test_unknown_backbone_names_the_builtins():
    with pytest.raises(MicroRMError, match="built-in backbones are default, static.*hub id needs"):
        load_backbone("no-such-org/no-such-backbone")


def test_max_length_must_be_positive():
    with pytest.raises(MicroRMError, match="--max-length"):
        load_backbone("default", max_length=0)


def test_default_backbone_matches_sentence_transformers():
    sentence_transformers = pytest.importorskip("sentence_transformers")
    backbone = load_backbone("default")
    texts = ["A man is eating food.", "The new movie is awesome!",
             "Rewards should depend on who is asking."]
    ours = backbone.encode([(t, None) for t in texts])
    assert ours.shape == (3, 384)
    reference = sentence_transformers.SentenceTransformer(str(default_model_dir()), device="cpu")
    theirs = reference.encode(texts, batch_size=1)  # mean pooling, then L2 normalisation
    np.testing.assert_allclose(ours / np.linalg.norm(ours, axis=1, keepdims=True), theirs,
                               atol=1e-5)


@pytest.fixture(scope="session")
def static():
    """Distilled once per machine into the user cache (about 40 s), then loaded from there."""
    return load_backbone("static")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_static_backbone_is_deterministic_and_semantic(static):
    items = [static.route_item(t) for t in (
        "How do I bake bread at home?", "What is a good recipe for homemade bread?",
        "The stock market fell sharply after the interest rate decision.")]
    vectors = static.encode(items)
    assert vectors.shape == (3, 256) and vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors, static.encode(items))
    np.testing.assert_allclose(vectors[1:2], static.encode(items[1:2]), atol=1e-6)
    assert _cosine(vectors[0], vectors[1]) > _cosine(vectors[0], vectors[2]) + 0.1
    assert load_backbone(**static.fingerprint()["spec"]).fingerprint() == static.fingerprint()
