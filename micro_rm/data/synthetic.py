"""Built-in synthetic preference text with known user groups (no download, license-free).

Every response is written from a binary *style vector* over attributes that a text encoder can
see: length, bullet structure, formality, safety caveats, humour and technical depth. Each
ground-truth user group has its own linear preference over those attributes and a context
sentence; a pair's label is sampled from that group's Bradley–Terry model
P(a ≻ b) = σ(β · w_g · (s_a − s_b)). The groups disagree, so pooled labels are a true mixture.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from micro_rm.errors import MicroRMError

STYLES = ("long", "bullets", "formal", "caveats", "humour", "technical")

TOPICS = (
    "saving for retirement", "learning a new language", "training for a marathon", "growing tomatoes",
    "writing a cover letter", "fixing a slow laptop", "cooking risotto", "negotiating a salary",
    "starting a podcast", "reducing stress at work", "choosing a used car", "planning a wedding",
    "teaching a child to read", "brewing coffee at home", "preparing for a job interview",
    "organising a small library", "keeping houseplants alive", "learning to play chess",
    "backing up family photos", "painting a bedroom", "budgeting for a holiday", "sleeping better",
    "writing unit tests", "adopting a rescue dog", "building a bookshelf", "improving posture",
    "studying for an exam", "hosting a dinner party", "learning to swim", "reducing food waste",
)

TEMPLATES = (
    "How should I go about {topic}?", "Can you give me advice on {topic}?",
    "What is the best way to approach {topic}?", "I need help with {topic}. Where do I start?",
    "Explain the key steps of {topic}.", "What mistakes should I avoid when {topic}?",
)

STEPS = (
    "set a clear goal for {topic} before anything else",
    "break {topic} into small steps you can finish in a day",
    "track your progress on {topic} every week",
    "learn from people who have done {topic} before",
    "budget the time and money that {topic} needs",
    "review what worked and adjust your plan for {topic}",
)

TECHNICAL = (
    "Quantitatively, a 15-20% buffer on your initial estimate absorbs most variance.",
    "Apply a feedback loop: measure, compare against the baseline, then iterate.",
    "The dominant constraint is usually throughput, so optimise the bottleneck first.",
)
PLAIN = ("Keep it simple and don't overthink it.", "Just take it one day at a time.")

OPENERS = {True: "Certainly. Here is a structured answer regarding {topic}.",
           False: "Hey! So, about {topic}, here's the deal."}
CLOSERS = {True: "I trust this proves useful to you.", False: "Hope that helps, good luck!"}
CAVEAT = ("Please note that circumstances differ, so consider consulting a qualified professional "
          "and proceed carefully.")
JOKE = "Fun fact: even my toaster has a five-year plan, and it is still just making toast."


@dataclass(frozen=True)
class Group:
    """A ground-truth user group: its name, context sentence and preference weights over STYLES."""

    name: str
    context: str
    weights: tuple[float, ...]


GROUPS = (
    Group("concise", "I am busy: give me a short, casual answer with no lists and no fluff.",
          (-2.0, -1.0, -0.5, -1.0, 0.0, -0.5)),
    Group("expert", "I am an engineer; I want a long, formal, technical answer with structured bullet points.",
          (1.0, 1.0, 1.0, 0.0, -1.0, 2.0)),
    Group("cautious", "I worry about risks; please be careful, formal and mention safety caveats.",
          (0.0, 0.0, 1.0, 2.5, -1.0, 0.0)),
    Group("playful", "Keep it fun and light-hearted, make me laugh, skip the jargon.",
          (0.0, -0.5, -1.0, -0.5, 2.5, -1.0)),
)


# Eight phrasings of each group's intent, the first being its training sentence (Group.context):
# the held-out-phrasing evaluation of the demo (configs/demo.yaml, micro_rm.experiment.phrasings).
PHRASINGS: dict[str, list[str]] = {
    "concise": [
        'I am busy: give me a short, casual answer with no lists and no fluff.',
        'Short answers only.',
        "Keep it brief and informal, please; I don't need bullet points.",
        "I'm on my phone between meetings, so just give me the gist.",
        'Answer in a sentence or two, like a friend texting back.',
        'No padding, no lists: quick and plain.',
        'As someone who hates long reads, I want the shortest casual reply possible.',
        'Be quick and relaxed about it.',
    ],
    "expert": [
        'I am an engineer; I want a long, formal, technical answer with structured bullet points.',
        'Technical detail, please.',
        'Give me an in-depth, rigorous breakdown organised as bullet points.',
        "I'm a senior developer, so don't simplify: use the proper jargon and be thorough.",
        'Write it like a formal technical specification.',
        'Longer is better for me, as long as it is precise and structured.',
        'Explain it the way you would to a room full of specialists.',
        'Formal, detailed and technical.',
    ],
    "cautious": [
        'I worry about risks; please be careful, formal and mention safety caveats.',
        'Safety first.',
        'Please point out anything that could go wrong before I try this.',
        "I'm a nervous beginner, so warn me about the dangers.",
        'Answer like a careful professional who always mentions precautions.',
        'Be formal and include the relevant warnings and caveats.',
        "I'd rather be safe than sorry, so flag every risk.",
        'Mention the hazards, please.',
    ],
    "playful": [
        'Keep it fun and light-hearted, make me laugh, skip the jargon.',
        'Make me laugh.',
        'I want a silly, cheerful answer with a joke or two.',
        'Talk to me like a funny friend, not like a textbook.',
        'Please be playful and casual; no technical terms.',
        'Humour me! Keep the tone light.',
        'Answer like a stand-up comedian would.',
        'Be goofy about it.',
    ],
}


def render_response(topic: str, style: tuple[int, ...], rng: random.Random) -> str:
    """Write one response to a prompt about ``topic`` with the given binary style vector."""
    long, bullets, formal, caveats, humour, technical = (bool(s) for s in style)
    lines = [s.format(topic=topic) for s in rng.sample(STEPS, 5 if long else 2)]
    lines.append(rng.choice(TECHNICAL if technical else PLAIN))
    if long and technical:
        lines.append(rng.choice([t for t in TECHNICAL if t != lines[-1]]))
    lines = [line[0].upper() + line[1:] for line in lines]
    body = "\n".join(f"- {line}" for line in lines) if bullets else " ".join(f"{line}." for line in lines)
    parts = [OPENERS[formal].format(topic=topic), body]
    if caveats:
        parts.append(CAVEAT)
    if humour:
        parts.append(JOKE)
    parts.append(CLOSERS[formal])
    return "\n\n".join(parts)


def make_synthetic_pairs(n_prompts: int = 200, pairs_per_prompt: int = 4, beta: float = 2.0, seed: int = 0,
                         responses_per_prompt: int | None = None) -> list[dict[str, Any]]:
    """Sample ``pairs_per_prompt`` pairs per prompt and group, labelled by the group's BT model,
    with ``context`` and ``attribute`` = that group. With ``responses_per_prompt`` = R, each
    prompt's pairs are drawn among R responses written once (R texts to encode per prompt instead
    of two per pair: what makes ``micro-rm demo`` fast); by default every pair is written afresh.

    >>> recs = make_synthetic_pairs(n_prompts=2, pairs_per_prompt=1, seed=0)
    >>> len(recs), sorted({r["attribute"] for r in recs}) == sorted(g.name for g in GROUPS)
    (8, True)
    """
    for name, value in (("n_prompts", n_prompts), ("pairs_per_prompt", pairs_per_prompt)):
        if value < 1:
            raise MicroRMError(f"synthetic `{name}` must be at least 1, got {value}")
    if not math.isfinite(beta) or beta < 0:
        raise MicroRMError(f"synthetic `beta` must be a finite number ≥ 0, got {beta}")
    if responses_per_prompt is not None and not 2 <= responses_per_prompt <= 2 ** len(STYLES):
        raise MicroRMError(f"responses_per_prompt must be in [2, {2 ** len(STYLES)}], "
                           f"got {responses_per_prompt}")
    rng = random.Random(seed)
    records = []
    for p in range(n_prompts):
        topic = TOPICS[p % len(TOPICS)]
        prompt = TEMPLATES[(p // len(TOPICS)) % len(TEMPLATES)].format(topic=topic)
        if p >= len(TOPICS) * len(TEMPLATES):
            prompt = f"{prompt} (case {p})"
        written: dict[tuple[int, ...], str] = {}  # style -> response, when responses are shared
        if responses_per_prompt is not None:
            for code in rng.sample(range(2 ** len(STYLES)), responses_per_prompt):
                style = tuple((code >> i) & 1 for i in range(len(STYLES)))
                written[style] = render_response(topic, style, rng)
        for group in GROUPS:
            for j in range(pairs_per_prompt):
                a, b = rng.sample(list(written), 2) if written else _distinct_styles(rng)
                utility = sum(w * (x - y) for w, x, y in zip(group.weights, a, b))
                a_wins = rng.random() < 1.0 / (1.0 + math.exp(-beta * utility))
                win, lose = (a, b) if a_wins else (b, a)
                records.append({
                    "prompt": prompt,
                    "chosen": written.get(win) or render_response(topic, win, rng),
                    "rejected": written.get(lose) or render_response(topic, lose, rng),
                    "context": group.context,
                    "attribute": group.name,
                    "id": f"synthetic-{seed}-{p}-{group.name}-{j}",
                })
    return records


SETTINGS = {"n_prompts": int, "pairs_per_prompt": int, "beta": float, "seed": int,
            "responses_per_prompt": int}


def build(source: str = "", skip_invalid: bool = False) -> list[dict[str, Any]]:
    """The ``synthetic`` builder: ``source`` is comma-separated ``key=value`` settings of
    :func:`make_synthetic_pairs`.

    >>> len(build("n_prompts=3,pairs_per_prompt=2,responses_per_prompt=4"))
    24
    """
    kwargs: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in str(source or "").split(","))):
        key, _, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if key not in SETTINGS:
            raise MicroRMError(f"synthetic source {source!r}: unknown setting {key!r}; "
                               f"use key=value,… with keys {', '.join(SETTINGS)}")
        try:
            kwargs[key] = SETTINGS[key](value)
        except ValueError:
            raise MicroRMError(f"synthetic source {source!r}: {key} must be "
                               f"{SETTINGS[key].__name__}, got {value!r}") from None
    return make_synthetic_pairs(**kwargs)


def _distinct_styles(rng: random.Random) -> tuple[tuple[int, ...], tuple[int, ...]]:
    a = b = tuple(rng.randint(0, 1) for _ in STYLES)
    while b == a:
        b = tuple(rng.randint(0, 1) for _ in STYLES)
    return a, b
