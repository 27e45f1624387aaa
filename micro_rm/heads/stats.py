"""Interpretable statistics of a response, to say what a reward head rewards (a head rewards a
statistic when its reward difference correlates with the statistic's; :mod:`micro_rm.heads.profile`).
Syllables for the Flesch formula come from pyphen (offline, unlike textstat ≥ 0.7.13), sentiment
from VADER. The phrase lists are short and English, meant to be read, checked and extended.

>>> row = response_statistics(["Sure! Here are 3 steps:\\n- plan\\n- act"], ["How do I start?"])[0]
>>> float(row[STATISTIC_NAMES.index("list_items")])
2.0
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np

WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*|\d+(?:[.,]\d+)*")
SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)|\n+")
LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+", re.MULTILINE)
MARKDOWN = re.compile(r"^\s*#{1,6}\s|\*\*[^*\n]+\*\*|`[^`\n]+`|^\s*\|.*\|\s*$", re.MULTILINE)
NUMBER = re.compile(r"\d|[%$€£]")
SIMILE = re.compile(r"\b(?:like an?|as if|as though)\b", re.IGNORECASE)

HEDGES = ("might", "may", "perhaps", "possibly", "probably", "likely", "could", "seems", "seem",
          "generally", "typically", "usually", "often", "somewhat", "i think", "i believe",
          "it depends", "not sure", "in some cases")
REFUSALS = ("i can't", "i cannot", "i can not", "i won't", "i will not", "i'm sorry", "i am sorry",
            "as an ai", "i'm not able", "i am not able", "i'm unable", "i am unable",
            "not comfortable", "i don't think i should", "i do not feel comfortable",
            "i'd rather not", "not appropriate", "inappropriate", "illegal", "unethical", "harmful")
INFORMAL = ("i", "me", "my", "you", "your", "we", "us", "our", "oh", "wow", "hey", "yeah", "yep",
            "ok", "okay", "cool", "awesome", "lol", "haha", "gonna", "wanna", "kinda", "stuff")
CONNECTIVES = ("therefore", "however", "moreover", "furthermore", "thus", "consequently", "hence",
               "additionally", "nevertheless", "accordingly", "whereas", "notably", "regarding")
ACTIONS = ("should", "must", "recommend", "next", "step", "steps", "plan", "implement", "consider",
           "ensure", "focus", "start", "invest", "reduce", "increase", "strategy", "strategic",
           "cost", "costs", "profit", "revenue", "market", "customer", "customers", "roi",
           "budget", "priority", "prioritize", "action", "actionable", "goal", "goals")
IMAGERY = ("aroma", "scent", "fragrance", "whisper", "whispers", "glow", "glowing", "shimmering", "golden",
           "gentle", "heart", "soul", "dream", "dreams", "beauty", "beautiful", "light", "shadow",
           "shadows", "sky", "sun", "moon", "stars", "sea", "ocean", "breeze", "wind", "dance",
           "sweet", "warm", "embrace", "journey", "tapestry", "symphony", "vibrant", "delicate",
           "majestic", "serene", "tender", "bloom", "blossom", "rhythm", "melody", "colors", "colours")
SCHOLARLY = ("research", "study", "studies", "evidence", "theory", "theoretical", "hypothesis",
             "analysis", "empirical", "significant", "literature", "framework", "data", "et",
             "al", "furthermore", "concept", "conceptual", "methodology", "scholars")


@dataclass(frozen=True)
class Statistic:
    """One response statistic: what it measures, its label phrases and its group."""

    name: str
    description: str
    more: str          # phrase when a head rewards more of it ("long")
    less: str          # phrase when it rewards less ("short")
    group: str         # length, readability, structure, tone, safety, literary, business, scholarly, relevance


STATISTICS = (
    Statistic("words", "log(1 + number of words)", "long", "short", "length"),
    Statistic("sentence_words", "mean words per sentence", "long-sentenced", "short-sentenced", "length"),
    Statistic("reading_ease", "Flesch reading ease (higher: easier)", "plain", "dense", "readability"),
    Statistic("lexical_diversity", "distinct / total words among the first 100", "lexically varied",
              "repetitive", "literary"),
    Statistic("figurative", "similes (like a, as if) per 100 words", "figurative", "literal", "literary"),
    Statistic("imagery", "sensory and evocative words (aroma, glow, heart, breeze) per 100 words",
              "evocative", "matter-of-fact", "literary"),
    Statistic("list_items", "lines that are list items", "list-structured", "prose", "structure"),
    Statistic("markdown", "markdown marks (headers, bold, code, tables)", "markdown-formatted",
              "unformatted", "structure"),
    Statistic("questions", "question marks per sentence", "questioning", "declarative", "tone"),
    Statistic("exclamations", "exclamation marks per sentence", "exclamatory", "calm", "tone"),
    Statistic("hedging", "hedge phrases (might, perhaps, it depends) per 100 words", "hedged",
              "assertive", "tone"),
    Statistic("sentiment", "VADER compound sentiment in [-1, 1]", "upbeat", "sombre", "tone"),
    Statistic("formality", "formal connectives minus informal words (I, you, wow, contractions) per "
              "100 words", "formal", "casual", "tone"),
    Statistic("refusal", "1 if it contains a refusal phrase (I can't, as an AI, inappropriate)",
              "refusing", "compliant", "safety"),
    Statistic("action", "action / business words (plan, cost, strategy, next step) per 100 words",
              "action-oriented", "reflective", "business"),
    Statistic("numbers", "digits and %, $ signs per 100 words", "quantitative", "qualitative", "business"),
    Statistic("scholarly", "scholarly words (research, evidence, theory) per 100 words", "scholarly",
              "lay", "scholarly"),
    Statistic("prompt_overlap", "share of the response's distinct words that appear in the prompt",
              "on-topic", "wide-ranging", "relevance"),
)
STATISTIC_NAMES = tuple(s.name for s in STATISTICS)


def response_statistics(responses: Sequence[str], prompts: Sequence[str], *, progress: bool = False) -> np.ndarray:
    """The statistics [N, S] (columns in ``STATISTIC_NAMES`` order) of N responses to their prompts.

    Each distinct (response, prompt) is measured once: preference data repeats responses."""
    from micro_rm.progress import progress_bar

    if len(responses) != len(prompts):
        raise ValueError(f"{len(responses)} responses but {len(prompts)} prompts")
    rows = [_measure(r, p) for r, p in progress_bar(zip(responses, prompts), total=len(prompts), unit="response",
                                             desc="response statistics", enabled=progress, leave=False)]
    return np.array(rows, dtype=np.float64).reshape(-1, len(STATISTICS))


@lru_cache(maxsize=65_536)
def _measure(response: str, prompt: str) -> tuple[float, ...]:
    words = [w.lower().replace("’", "'") for w in WORD.findall(response)]
    n = max(len(words), 1)
    sentences = max(len([s for s in SENTENCE_END.split(response) if WORD.search(s)]), 1)
    text = " " + " ".join(words) + " "
    per100 = lambda count: 100.0 * count / n
    phrases = lambda lexicon: sum(text.count(f" {p} ") for p in lexicon)
    contractions = sum(("'" in w) for w in words)
    syllables = sum(len(_hyphenator().positions(w)) + 1 for w in words if w[0].isalpha())
    prompt_words = set(WORD.findall(prompt.lower()))
    distinct = set(words)
    values = {
        "words": math.log1p(len(words)),
        "sentence_words": len(words) / sentences,
        "reading_ease": 206.835 - 1.015 * len(words) / sentences - 84.6 * syllables / n,
        "lexical_diversity": len(set(words[:100])) / max(min(len(words), 100), 1),
        "figurative": per100(len(SIMILE.findall(response))),
        "imagery": per100(phrases(IMAGERY)),
        "list_items": float(len(LIST_LINE.findall(response))),
        "markdown": float(len(MARKDOWN.findall(response))),
        "questions": response.count("?") / sentences,
        "exclamations": response.count("!") / sentences,
        "hedging": per100(phrases(HEDGES)),
        "sentiment": float(_sentiment_model()(response)["compound"]),
        "formality": per100(phrases(CONNECTIVES) - phrases(INFORMAL) - contractions),
        "refusal": float(any(f" {p} " in text for p in REFUSALS)),
        "action": per100(phrases(ACTIONS)),
        "numbers": per100(len(NUMBER.findall(response))),
        "scholarly": per100(phrases(SCHOLARLY)),
        "prompt_overlap": len(distinct & prompt_words) / max(len(distinct), 1),
    }
    return tuple(values[s.name] for s in STATISTICS)


@lru_cache(maxsize=1)
def _hyphenator():
    import pyphen

    return pyphen.Pyphen(lang="en_US")


@lru_cache(maxsize=1)
def _sentiment_model() -> Callable[[str], dict]:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer().polarity_scores
