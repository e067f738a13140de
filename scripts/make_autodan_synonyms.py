#!/usr/bin/env python3
"""Writes data/autodan/synonyms.tsv: WordNet 3.0 lemmas of every word of the AutoDAN prototypes.

The `autodan` method's synonym mutation is Self-Correction's `replace_with_synonyms`
(yifeiwang77/Self-Correction, Jailbreak/autodan/opt_utils.py): a picked word becomes
`wordnet.synsets(word)[0].lemmas()[0].name()`. This script asks NLTK that question, with NLTK's
own WordNet reader (`synsets` order, `morphy`, exception lists) over the WordNet 3.0 database
that NLTK's `wordnet` corpus is, as Debian's `wordnet-base` package installs it. Only the words
the method can meet are kept: the words of the prototypes in data/autodan/ and of the names the
rendering adds (runner's defaults), and, since a replaced word can be picked again, the words of
every first lemma reachable from them.

Words are tokenized as runner does (`methods::autodan::word_tokens`): runs of letters and digits
joined by single hyphens. Each line is `word<TAB>lemma|lemma|...`: the lemma names of all the
word's synsets in NLTK's order, without repeats; the first is the one the mutation writes. Words
without a synset have no line.

Needs:  apt-get install wordnet-base   (WordNet 3.0 in /usr/share/wordnet)
        pip install nltk
Run from the repository root:  python scripts/make_autodan_synonyms.py [--wordnet DIR]
"""

import argparse
import glob
import os
import re
import shutil
import tempfile

import nltk
from nltk.corpus.reader.wordnet import WordNetCorpusReader

WORD = re.compile(r"[^\W_]+(?:-[^\W_]+)*")


def words(text):
    return [m.group(0) for m in WORD.finditer(text)]


def wordnet_version(root):
    """The version line of the database's license header (data.noun starts with it)."""
    with open(os.path.join(root, "data.noun"), encoding="utf-8") as f:
        for line in f:
            if not line.startswith("  "):
                break
            m = re.search(r"WordNet (\d+\.\d+)", line)
            if m:
                return m.group(1)
    return "unknown"


class WordNet30(WordNetCorpusReader):
    """The reader over a WordNet 3.0 directory: NLTK maps other databases to its own `wordnet`
    corpus (3.0) for the multilingual data, which is neither needed nor installed here."""

    def map_wn(self, version="wordnet"):
        return None


def reader(root, scratch):
    """NLTK's WordNet reader over `root`. Debian's wordnet-base leaves out `lexnames` (the names of
    the lexicographer files), which the reader loads but which no lemma name depends on: numbered
    stand-ins are supplied beside copies of the database files (NLTK refuses links that leave its root)."""
    # NLTK reads corpora only under its data path.
    nltk.data.path.extend([os.path.realpath(root), os.path.realpath(scratch)])
    if os.path.exists(os.path.join(root, "lexnames")):
        return WordNet30(root, None)
    for name in os.listdir(root):
        shutil.copy(os.path.join(root, name), os.path.join(scratch, name))
    with open(os.path.join(scratch, "lexnames"), "w") as f:
        f.writelines(f"{i:02d}\tlexfile{i:02d}\t0\n" for i in range(64))
    return WordNet30(scratch, None)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wordnet", default="/usr/share/wordnet", help="WordNet database directory (data.noun, index.noun, ...)")
    ap.add_argument("--prototypes", default="data/autodan/prototype_*.txt")
    ap.add_argument("--out", default="data/autodan/synonyms.tsv")
    # Rendering puts the model's name into the candidates before the GA mutates them (ChatGPT ->
    # model_name under render = "cac"; [MODEL] and [KEEPER]): runner's defaults.
    ap.add_argument("--names", default="Assistant,its developer", help="comma-separated texts the rendering adds")
    args = ap.parse_args()

    scratch = tempfile.TemporaryDirectory()
    wn = reader(args.wordnet, scratch.name)
    version = wordnet_version(args.wordnet)
    if version != "3.0":
        raise SystemExit(f"{args.wordnet} holds WordNet {version}; NLTK's wordnet corpus (Self-Correction's) is 3.0")
    files = sorted(glob.glob(args.prototypes))
    if not files:
        raise SystemExit(f"no prototypes match {args.prototypes}")

    pending = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            pending.extend(w.lower() for w in words(f.read()))
    for text in args.names.split(","):
        pending.extend(w.lower() for w in words(text))
    seen, table = set(), {}
    while pending:
        word = pending.pop()
        if word in seen:
            continue
        seen.add(word)
        synsets = wn.synsets(word)
        if not synsets or not synsets[0].lemmas():
            continue
        names = []
        for s in synsets:
            for lemma in s.lemmas():
                if lemma.name() not in names:
                    names.append(lemma.name())
        first = synsets[0].lemmas()[0].name()
        assert names[0] == first
        table[word] = names
        # The replacement can be picked in a later mutation.
        pending.extend(w.lower() for w in words(first))

    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        f.write(
            f"# WordNet {version} lemma names per word (all synsets, NLTK's order; the first is "
            f"synsets[0].lemmas()[0].name()). Made by scripts/make_autodan_synonyms.py with nltk "
            f"{nltk.__version__} from {', '.join(os.path.basename(p) for p in files)} and the names "
            f"{args.names!r}.\n"
            "# WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved. "
            "(License: data/SOURCES.md, \"WordNet license\".)\n"
        )
        for word in sorted(table):
            f.write(f"{word}\t{'|'.join(table[word])}\n")
    print(f"{args.out}: {len(table)} words with synsets of {len(seen)} looked up")


if __name__ == "__main__":
    main()
