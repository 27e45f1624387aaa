"""OpenRLHF out of the box, through OpenRLHF's own calling code (openrlhf 0.11.2, installed by
`make install` without its GPU dependencies): its remote-reward client
(`SingleTurnAgentExecutor` of `openrlhf/utils/agent.py`) against `micro-rm serve` started as the
README says, and the same executor loading `reward_func.py` for the in-process route; the labels →
context / user mapping, OpenRLHF-length texts and a left-truncated prompt."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient

from micro_rm.errors import MicroRMError
from test_frameworks import framework
from test_serve import ADMIN, BAD, GOOD, PROMPT, bearer, build_model, build_scorer, make_settings


@pytest.fixture(scope="module")
def scorer():
    return build_scorer()


@pytest.fixture(scope="module")
def agent():
    """``openrlhf.utils.agent``: where OpenRLHF 0.11 fetches rewards (over HTTP or from a file)."""
    return framework("openrlhf.utils.agent")


def openrlhf_post(agent, url: str, queries: list[str], prompts: list[str], labels: list) -> dict:
    """What OpenRLHF's own HTTP client gets back from ``url`` for one batch:
    ``SingleTurnAgentExecutor._fetch_rewards_via_http`` (aiohttp, ``{"query", "prompts", "labels"}``,
    no Authorization header; it retries 5 times, then raises)."""
    executor = agent.SingleTurnAgentExecutor(remote_rm_url=[url])   # train_ppo_ray splits --reward.remote_url on ","
    (out,) = asyncio.run(executor._fetch_rewards_via_http(queries, prompts, labels))
    return out


def byte_level_tokenizer():
    """A byte-level BPE tokenizer (as Llama 3 / Qwen use) trained here on a few words, so that
    decoding gives back the prompt exactly, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator([PROMPT, GOOD, BAD], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>")


class Engine:
    """The one stand-in: vLLM's engine, as ``SingleTurnAgentExecutor.execute`` awaits it (its
    ``generate`` returns an output whose ``outputs[0]`` has ``token_ids``); it "generates" ``response``."""

    def __init__(self, tokenizer, response: str):
        self.ids = tokenizer(response, add_special_tokens=False)["input_ids"]

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        return SimpleNamespace(outputs=[SimpleNamespace(token_ids=self.ids, finish_reason="stop", logprobs=None)])


def openrlhf_rollout(agent, remote_rm_url: str, prompt: str, label: str, response: str) -> dict:
    """One single-turn rollout through ``SingleTurnAgentExecutor.execute``: it tokenizes the prompt,
    "generates", decodes prompt + response into the query, fetches the reward from ``remote_rm_url``
    (an HTTP URL, or a ``.py`` file whose ``reward_func`` it loads) and returns what the trainer reads."""
    tokenizer = byte_level_tokenizer()
    executor = agent.SingleTurnAgentExecutor(remote_rm_url=remote_rm_url.split(","))
    params = SimpleNamespace(max_tokens=64, logprobs=None)
    return asyncio.run(executor.execute(prompt, label, params, max_length=1024, hf_tokenizer=tokenizer,
                                        llm_engine=Engine(tokenizer, response)))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory):
    """`micro-rm serve --model DIR --anonymous-scoring --labels context` in its own process, as in
    README's OpenRLHF section (through `python -m micro_rm`)."""
    tmp = tmp_path_factory.mktemp("openrlhf")
    build_model().save_pretrained(tmp / "model")
    port = _free_port()
    env = {**os.environ, "MICRO_RM_CACHE": str(tmp / "features")}
    env.pop("MICRO_RM_ADMIN_TOKEN", None)
    log = open(tmp / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "micro_rm", "serve", "--model", str(tmp / "model"),
                               "--state", f"sqlite:///{tmp / 'state.db'}", "--port", str(port),
                               "--anonymous-scoring", "--labels", "context", "--log-level", "warning"],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:   # the server loads torch and the backbone first; wait for it or for its exit
            if server.poll() is not None:
                pytest.fail(f"the server exited ({server.returncode}):\n{(tmp / 'server.log').read_text()}")
            try:
                urllib.request.urlopen(base + "/healthz", timeout=5).read()
                break
            except OSError:
                time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        server.wait()
        log.close()


@pytest.mark.frameworks
def test_openrlhfs_client_against_the_readme_server(agent, readme_server):
    url = readme_server + "/get_reward"
    child = openrlhf_post(agent, url, ["<s>" + PROMPT + GOOD], [PROMPT], ["I am a child."])
    physicist = openrlhf_post(agent, url, ["<s>" + PROMPT + GOOD], [PROMPT], ["I am a physicist."])
    for out in (child, physicist):
        assert out["rewards"] and all(isinstance(r, float) for r in out["rewards"])
        assert out["scores"] == out["rewards"]
        assert set(out["extra_logs"]) == {"head0_reward", "head0_weight", "head1_reward", "head1_weight"}
        assert out["extra_logs"]["head0_weight"][0] + out["extra_logs"]["head1_weight"][0] == pytest.approx(1.0)
    assert child["rewards"][0] != pytest.approx(physicist["rewards"][0], rel=1e-6)   # the label routes
    # a batch (older OpenRLHF clients) equals one-by-one requests
    both = openrlhf_post(agent, url, [PROMPT + GOOD] * 2, [PROMPT] * 2, ["I am a child.", "I am a physicist."])
    np.testing.assert_allclose(both["rewards"], child["rewards"] + physicist["rewards"], rtol=1e-5)


@pytest.mark.frameworks
def test_long_and_left_truncated_prompts_are_scored_not_refused(agent, readme_server):
    url = readme_server + "/get_reward"
    long_prompt = "Explain entropy. " * 1800                     # ~30,000 characters: an 8k-token context
    out = openrlhf_post(agent, url, [long_prompt + GOOD], [long_prompt], [""])
    assert len(out["rewards"]) == 1
    truncated = openrlhf_post(agent, url, [PROMPT[10:] + GOOD], [PROMPT], ["I am a child."])   # cut from the left
    assert len(truncated["rewards"]) == 1 and np.isfinite(truncated["rewards"][0])
    metrics = urllib.request.urlopen(readme_server + "/metrics").read().decode()
    assert "micro_rm_get_reward_prompt_not_found_total 1.0" in metrics


@pytest.mark.frameworks
def test_a_rollout_gets_the_same_reward_over_http_and_from_reward_func_py(agent, readme_server, tmp_path,
                                                                           monkeypatch):
    """OpenRLHF's whole single-turn path, both routes the README gives: ``--reward.remote_url``
    the server's /get_reward, and ``--reward.remote_url reward_func.py``."""
    from micro_rm.integrations import common

    child = openrlhf_rollout(agent, readme_server + "/get_reward", PROMPT, "I am a child.", GOOD)
    physicist = openrlhf_rollout(agent, readme_server + "/get_reward", PROMPT, "I am a physicist.", GOOD)
    assert child["reward"] is not None, "OpenRLHF logs the error and trains with reward None"
    assert child["scores"] == child["reward"] and len(child["reward"]) == 1
    assert sorted(child["extra_logs"]) == ["head0_reward", "head0_weight", "head1_reward", "head1_weight"]
    assert child["reward"][0] != pytest.approx(physicist["reward"][0], rel=1e-6)     # the label routes

    build_model().save_pretrained(tmp_path / "model")   # the server's model
    monkeypatch.setenv("MICRO_RM_MODEL", str(tmp_path / "model"))
    monkeypatch.setenv("MICRO_RM_LABELS", "context")
    monkeypatch.setattr(common, "_loaded", {})
    (tmp_path / "reward_func.py").write_text("from micro_rm.integrations.openrlhf import reward_func\n")
    local = openrlhf_rollout(agent, str(tmp_path / "reward_func.py"), PROMPT, "I am a child.", GOOD)
    assert local["reward"] is not None
    assert float(local["reward"][0]) == pytest.approx(child["reward"][0], rel=1e-5)
    assert float(local["extra_logs"]["head1_weight"][0]) == pytest.approx(child["extra_logs"]["head1_weight"][0],
                                                                          rel=1e-5)


def test_labels_carry_a_user_or_json(tmp_path, scorer):
    from micro_rm.serve.app import create_app

    settings = make_settings(tmp_path, anonymous_scoring=True, labels="json")
    with TestClient(create_app(settings, scorer=scorer)) as client:
        client.post("/feedback", json=[{"user_id": "ana", "prompt": PROMPT, "chosen": BAD, "rejected": GOOD}] * 3,
                    headers=bearer(ADMIN))
        ana = client.post("/score", json={"prompt": PROMPT, "responses": [GOOD], "user_id": "ana",
                                          "context": "I am a child."}, headers=bearer(ADMIN)).json()
        body = {"query": [PROMPT + GOOD] * 2, "prompts": [PROMPT] * 2,
                "labels": [json.dumps({"user_id": "ana", "context": "I am a child."}), {"context": "I am a child."}]}
        out = client.post("/get_reward", json=body)                  # no token: the operator allowed it
        assert out.status_code == 200, out.text
        rewards = out.json()["rewards"]
        assert rewards[0] == pytest.approx(ana["scores"][0]["reward"], rel=1e-5) and rewards[0] != pytest.approx(rewards[1])
        # a user token may not score another user through a label
        token = client.post("/users", json={"user_id": "ben"}, headers=bearer(ADMIN)).json()["token"]
        assert client.post("/get_reward", json=body, headers=bearer(token)).status_code == 403
        bad = client.post("/get_reward", json={**body, "labels": ["not json", "{}"]})
        assert bad.status_code == 422 and "labels[0]: not a JSON object" in bad.json()["detail"]
        short = client.post("/get_reward", json={**body, "labels": ["{}"]})
        assert short.status_code == 422 and "`labels` has 1 entries but `query` has 2" in short.json()["detail"]
    with pytest.raises(MicroRMError, match="--labels must be one of ignore, context, user_id, json"):
        make_settings(tmp_path, labels="answer")


def test_ignored_labels_do_not_route(tmp_path, scorer):
    from micro_rm.serve.app import create_app

    with TestClient(create_app(make_settings(tmp_path), scorer=scorer)) as client:   # default: --labels ignore
        body = {"query": [PROMPT + GOOD], "prompts": [PROMPT]}
        plain = client.post("/get_reward", json=body, headers=bearer(ADMIN)).json()["rewards"]
        labelled = client.post("/get_reward", json={**body, "labels": ["I am a child."]}, headers=bearer(ADMIN))
        assert labelled.json()["rewards"] == plain


def test_in_process_reward_func_matches_the_server(tmp_path, monkeypatch, scorer):
    """OpenRLHF's `--remote_rm_url reward_func.py` mode: the file re-exports our reward_func."""
    import importlib.util

    import torch

    from micro_rm.integrations import common
    from micro_rm.integrations.openrlhf import make_reward_func
    from micro_rm.serve.app import create_app

    build_model().save_pretrained(tmp_path / "model")
    monkeypatch.setenv("MICRO_RM_MODEL", str(tmp_path / "model"))
    monkeypatch.setenv("MICRO_RM_LABELS", "context")
    monkeypatch.setattr(common, "_loaded", {})
    (tmp_path / "reward_func.py").write_text("from micro_rm.integrations.openrlhf import reward_func\n")
    spec = importlib.util.spec_from_file_location("reward_func", tmp_path / "reward_func.py")  # as OpenRLHF does
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    queries, prompts, labels = ["<pad>" + PROMPT + GOOD, PROMPT + BAD], [PROMPT] * 2, ["I am a child.", ""]
    out = module.reward_func(queries, prompts, labels)
    assert isinstance(out["rewards"], torch.Tensor) and out["rewards"].shape == (2,)
    assert torch.equal(out["scores"], out["rewards"]) and out["extra_logs"]["head1_weight"].shape == (2,)
    settings = make_settings(tmp_path, anonymous_scoring=True, labels="context")
    with TestClient(create_app(settings, scorer=scorer)) as client:
        served = client.post("/get_reward", json={"query": queries, "prompts": prompts, "labels": labels}).json()
    np.testing.assert_allclose(out["rewards"].numpy(), served["rewards"], rtol=1e-5, atol=1e-6)
    with pytest.raises(MicroRMError, match="a user_id label must be a string"):
        make_reward_func(labels="user_id")([PROMPT + GOOD], [PROMPT], [3])
    monkeypatch.delenv("MICRO_RM_MODEL")
    monkeypatch.setattr(common, "_loaded", {})
    with pytest.raises(MicroRMError, match="set \\$MICRO_RM_MODEL"):
        make_reward_func()


def test_serve_warns_when_labels_are_read_but_the_client_would_get_401(tmp_path, monkeypatch, caplog):
    import uvicorn

    from micro_rm.cli.app import main

    build_model().save_pretrained(tmp_path / "model")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    state = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["serve", "--model", str(tmp_path / "model"), "--state", state, "--labels", "context"]) == 0
    assert "--labels context without --anonymous-scoring" in caplog.text
    caplog.clear()
    assert main(["serve", "--model", str(tmp_path / "model"), "--state", state, "--labels", "context",
                 "--anonymous-scoring"]) == 0
    assert "without --anonymous-scoring" not in caplog.text
    assert main(["serve", "--model", str(tmp_path / "model"), "--labels", "answer"]) == 2
