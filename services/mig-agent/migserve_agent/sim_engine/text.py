"""Simulated text: pseudo-words from a fixed vocabulary, prompt token counts, stop sequences.

Pure and deterministic. The output is lorem-ipsum filler so nobody mistakes the
sim engine for a real model. The same seed and prompt always give the same
tokens (the seed is mixed with the prompt through SHA-256, so the result does
not depend on Python's hash randomisation).

Token counts are approximations: a prompt has one token per started 4
characters of each whitespace-separated word (``"hello world!"`` is 2 + 2);
each chat message adds 4 tokens for its role and framing.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

_WORDS = (  # noqa: SIM905 (a paragraph reads better than 63 list items)
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua enim ad minim veniam quis nostrud "
    "exercitation ullamco laboris nisi aliquip ex ea commodo consequat duis aute irure "
    "in reprehenderit voluptate velit esse cillum fugiat nulla pariatur excepteur sint "
    "occaecat cupidatat non proident sunt culpa qui officia deserunt mollit anim id est "
    "laborum sim"
).split()

#: Token texts by token id: words with a leading space, then punctuation.
VOCABULARY: tuple[str, ...] = (*(" " + w for w in _WORDS), ",", ".", "\n")
_WEIGHTS = (*([10] * len(_WORDS)), 12, 15, 3)
_CUM_WEIGHTS = tuple(itertools.accumulate(_WEIGHTS))
_TOKEN_IDS = range(len(VOCABULARY))

#: Tokens a chat message adds beyond its content (role and framing).
CHAT_MESSAGE_OVERHEAD_TOKENS = 4

FinishReason = Literal["length", "stop"]


def count_tokens(text: str) -> int:
    """Approximate token count: one per started 4 characters of each word."""
    return sum(-(-len(word) // 4) for word in text.split())


def logprob(token_id: int) -> float:
    """A fixed pseudo log-probability for a token id (not a real probability)."""
    return -round(0.05 + (token_id % 13) * 0.17, 2)


@dataclass(frozen=True, slots=True)
class Completion:
    """Generated tokens and the text a client sees."""

    #: ids of the generated tokens, including one that completed a stop sequence
    token_ids: tuple[int, ...]
    #: visible text of each generated token (clipped or empty at a stop sequence)
    pieces: tuple[str, ...]
    text: str
    finish_reason: FinishReason
    #: the stop sequence that ended generation, if any
    stop_sequence: str | None = None

    @property
    def generated_tokens(self) -> int:
        return len(self.token_ids)


def request_seed(seed: int, prompt: str) -> int:
    """A 64-bit seed that depends on both the request seed and the prompt."""
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def complete(
    prompt: str,
    *,
    seed: int,
    max_tokens: int,
    stop: Sequence[str] = (),
    include_stop: bool = False,
) -> Completion:
    """Generate up to ``max_tokens`` tokens for ``prompt``.

    Generation ends at the token that completes the first stop sequence to
    appear. OpenAI-style output cuts the text before the stop sequence;
    TGI-style output (``include_stop``) keeps every generated token whole.
    """
    rng = random.Random(request_seed(seed, prompt))
    ids = rng.choices(_TOKEN_IDS, cum_weights=_CUM_WEIGHTS, k=max_tokens)
    pieces = [VOCABULARY[i] for i in ids]
    text = "".join(pieces)
    hit = _first_stop(text, stop)
    if hit is None:
        return Completion(tuple(ids), tuple(pieces), text, "length")
    start, stop_sequence = hit
    ends = list(itertools.accumulate(len(p) for p in pieces))
    last = bisect_left(ends, start + len(stop_sequence))  # the token completing the stop
    cut = ends[last] if include_stop else start
    visible: list[str] = []
    offset = 0
    for piece in pieces[: last + 1]:
        visible.append(piece[: max(0, cut - offset)])
        offset += len(piece)
    return Completion(
        tuple(ids[: last + 1]), tuple(visible), text[:cut], "stop", stop_sequence=stop_sequence
    )


def _first_stop(text: str, stop: Sequence[str]) -> tuple[int, str] | None:
    """(start, sequence) of the stop sequence that is complete earliest in ``text``."""
    best: tuple[int, int, str] | None = None
    for sequence in stop:
        if not sequence:
            continue
        start = text.find(sequence)
        if start < 0:
            continue
        key = (start + len(sequence), start, sequence)
        if best is None or key < best:
            best = key
    return None if best is None else (best[1], best[2])
