"""Synthetic prompts that imitate a handful of seed captions (Trans-LoRA's generator).

Offline by default (``neighbour_prompts``): each new prompt recombines the seed captions' words and
replaces some of them by their nearest neighbours in the target text encoder's token-embedding
space. Words every seed caption shares (the grammar, a style phrase) and the trigger are kept.
Optionally (``lm_prompts``) any transformers causal LM, loaded from a local path or the cache,
is prompted with the seeds as in the paper, and its continuations are cleaned into captions.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import ShiraError

_WORD = re.compile(r"[a-z][a-z'-]*")


def _words(caption: str) -> list[str]:
    return caption.strip().lower().split()


def word_vocabulary(tokenizer, embeddings: torch.Tensor, min_length: int = 3) -> tuple[list[str], torch.Tensor]:
    """The tokenizer's whole-word tokens (CLIP's ``</w>`` ending; alphabetic, ``min_length`` letters
    or more) and their unit-norm rows of the token-embedding table."""
    vocab = tokenizer.get_vocab()
    words, ids = [], []
    for token, index in vocab.items():
        if index >= embeddings.shape[0]:
            continue
        text = token[:-4] if token.endswith("</w>") else token.lstrip("Ġ▁") if token[:1] in "Ġ▁" else None
        if text and text.isalpha() and text.isascii() and len(text) >= min_length:
            words.append(text.lower())
            ids.append(index)
    if not words:
        raise ShiraError("the tokenizer has no whole-word tokens to draw synthetic prompts from")
    table = torch.nn.functional.normalize(embeddings[torch.tensor(ids)].detach().float(), dim=1)
    return words, table


def nearest_words(word: str, words: list[str], table: torch.Tensor, k: int = 5) -> list[str]:
    """The ``k`` vocabulary words nearest to ``word`` (cosine, token embeddings), itself excluded;
    empty when ``word`` is not one token."""
    if word not in words:
        return []
    scores = table @ table[words.index(word)]
    order = scores.argsort(descending=True).tolist()
    return [words[i] for i in order if words[i] != word][:k]


def neighbour_prompts(seeds: Sequence[str], count: int, tokenizer, embeddings: torch.Tensor, *, seed: int = 0,
                      keep: Sequence[str] = (), neighbour_rate: float = 0.25, k: int = 5) -> list[str]:
    """``count`` new captions like ``seeds``, without a model: a seed caption is the template; each
    word that not all seeds share is replaced, with probability ``1 - neighbour_rate``, by a word
    another seed of the same length has at that position, else by one of its ``k`` nearest
    vocabulary neighbours in the embedding space. Words in every seed and ``keep`` (the trigger,
    a style phrase) stay. Distinct prompts first; repeats only once variety runs out."""
    seeds = [s.strip() for s in seeds if s and s.strip()]
    if not seeds:
        raise ShiraError("no seed captions to imitate: give the seed images same-name .txt captions")
    if count < 1:
        raise ShiraError(f"the number of synthetic prompts must be at least 1, got {count}")
    words, table = word_vocabulary(tokenizer, embeddings)
    split = [_words(s) for s in seeds]
    shared = set.intersection(*(set(w) for w in split)) | {w.lower() for phrase in keep for w in phrase.split()}
    rng = np.random.default_rng(seed)
    neighbours: dict[str, list[str]] = {}
    out: list[str] = []
    seen = set()
    attempts = 0
    while len(out) < count:
        attempts += 1
        template = split[rng.integers(len(split))]
        same_length = [s for s in split if len(s) == len(template)]
        new = []
        for i, word in enumerate(template):
            core = word.rstrip(",.;:")
            tail = word[len(core):]
            if core in shared or not _WORD.fullmatch(core or "-"):
                new.append(word)
                continue
            if rng.random() < neighbour_rate:
                if core not in neighbours:
                    neighbours[core] = nearest_words(core, words, table, k)
                pool = neighbours[core]
            else:
                pool = [s[i].rstrip(",.;:") for s in same_length]
            new.append((pool[rng.integers(len(pool))] if pool else core) + tail)
        prompt = " ".join(new)
        if prompt not in seen or attempts > 50 * count:
            seen.add(prompt)
            out.append(prompt)
    return out


def target_text_embeddings(pipe) -> tuple[object, torch.Tensor]:
    """The tokenizer and token-embedding table of a pipeline's (first) text encoder."""
    return pipe.tokenizer, pipe.text_encoder.get_input_embeddings().weight


# ------------------------------------------------------------------------------------ a causal LM

def load_generator(path_or_id: str):
    """A transformers causal LM and its tokenizer from a local folder or the local cache (no download)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path_or_id, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path_or_id, local_files_only=True)
    except Exception as exc:  # OSError for a missing model, ValueError for a non-causal one
        where = "folder" if os.path.isdir(str(path_or_id)) else "id (local cache only, nothing is downloaded)"
        raise ShiraError(f"--generator {path_or_id}: cannot load a causal language model from this {where} "
                         f"({str(exc).splitlines()[0][:160]})") from None
    return model.eval(), tokenizer


def generator_prompt(seeds: Sequence[str]) -> str:
    """The text an LM continues: the seeds as numbered examples, as Trans-LoRA prompts its generator."""
    lines = "\n".join(f"{i + 1}. {s.strip()}" for i, s in enumerate(seeds))
    return f"Here are captions of images in one style:\n{lines}\n{len(seeds) + 1}."


def clean_caption(text: str, max_words: int = 16) -> str:
    """The first line of a continuation, as lower-case words (punctuation between words kept as commas)."""
    line = text.strip().split("\n")[0]
    line = re.sub(r"^\d+[.)]\s*", "", line.strip())
    words = [w for w in re.findall(r"[A-Za-z][A-Za-z'-]*|,", line)][:max_words]
    caption = " ".join(words).replace(" ,", ",").strip(" ,").lower()
    return caption


def lm_prompts(seeds: Sequence[str], count: int, generator, *, seed: int = 0, max_new_tokens: int = 24,
               temperature: float = 1.0, max_tries: int | None = None) -> list[str]:
    """``count`` captions from a causal LM (``generator``: a path / cached id, or a (model, tokenizer)
    pair) prompted with the seed captions; empty or repeated continuations are drawn again, up to
    ``max_tries`` (default 10 x count); the rest is filled from the seeds themselves."""
    seeds = [s.strip() for s in seeds if s and s.strip()]
    if not seeds:
        raise ShiraError("no seed captions to imitate: give the seed images same-name .txt captions")
    model, tokenizer = load_generator(generator) if isinstance(generator, (str, os.PathLike)) else generator
    state = torch.random.get_rng_state()  # restored below: sampling leaves the caller's RNG alone
    torch.manual_seed(seed)
    out, seen = [], set(seeds)
    tries = 0
    max_tries = max_tries or 10 * count
    rng = np.random.default_rng(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    try:
        with torch.no_grad():
            while len(out) < count and tries < max_tries:
                tries += 1
                order = rng.permutation(len(seeds))
                text = generator_prompt([seeds[i] for i in order])
                ids = tokenizer(text, return_tensors="pt")
                generated = model.generate(**ids, do_sample=True, temperature=temperature, max_new_tokens=max_new_tokens,
                                           pad_token_id=pad)
                continuation = tokenizer.decode(generated[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
                caption = clean_caption(continuation)
                if caption and caption not in seen:
                    seen.add(caption)
                    out.append(caption)
    finally:
        torch.random.set_rng_state(state)
    while len(out) < count:  # the LM gave too few: the seeds fill in, in turn
        out.append(seeds[len(out) % len(seeds)])
    return out


def synthetic_prompts(seeds: Sequence[str], count: int, pipe=None, *, generator=None, seed: int = 0,
                      keep: Sequence[str] = ()) -> list[str]:
    """Step 1: ``count`` synthetic prompts imitating ``seeds``: from ``generator`` (a causal LM) when
    given, else offline from ``pipe``'s (the target's) tokenizer and token embeddings."""
    if generator is not None:
        return lm_prompts(seeds, count, generator, seed=seed)
    if pipe is None:
        raise ShiraError("offline synthetic prompts need the target pipeline's tokenizer and text encoder")
    tokenizer, embeddings = target_text_embeddings(pipe)
    return neighbour_prompts(seeds, count, tokenizer, embeddings, seed=seed, keep=keep)
