"""A visual question-answering table derived from the built-in digits, for `mmjax data build
--kind table` and a fused model's fine-tune (configs/finetune_vqa_digits.py).

    python -m mmjax.data.digit_questions OUT_DIR   # OUT_DIR/questions.csv + OUT_DIR/images/*.png
    mmjax data build OUT_DIR/questions.csv --kind table --name digit_questions

Design: the answer needs both the question and the image, so neither alone does better than
chance. Every digit image (the 5,000 of `digit_captions`, its 4,000 train / 1,000 test split
kept) gets the same seven questions:
- "is this digit a {its name}?" -> yes, and "is this digit a {another name}?" -> no, the other
  name cycling through the nine wrong ones by the image's index within its class, so each
  identity question is asked about as often with yes as with no;
- "is this digit even?" and "is this digit odd?" (one yes, one no);
- "is this digit greater than four?" and "is this digit less than five?" (one yes, one no);
- "what digit is this?" -> its name.
The classes are the 12 answers (yes, no, zero ... nine). Each image has 3 yes, 3 no and 1 name,
so an image-only classifier scores at most 3/7 (0.429); the digits have 500 per class, so a
yes/no question's answer is yes for half the images and a text-only classifier scores about
(6 × 0.5 + 1 × 0.1) / 7 (0.443). A model that reads the digit and the question can score 1.
Deterministic: the same mmjax version writes the same files.
"""

from __future__ import annotations

import csv
import os
import sys

import numpy as np

from mmjax.data.sources import DIGIT_NAMES

SPLITS = ('train', 'test')


def questions(label: int, index: int) -> list[tuple[str, str]]:
    """The (question, answer) pairs of a digit `label`, the `index`-th image of its class."""
    other = (label + 1 + index % 9) % 10
    yes_no = lambda x: 'yes' if x else 'no'
    return [(f'is this digit a {DIGIT_NAMES[label]}?', 'yes'),
            (f'is this digit a {DIGIT_NAMES[other]}?', 'no'),
            ('is this digit even?', yes_no(label % 2 == 0)),
            ('is this digit odd?', yes_no(label % 2 == 1)),
            ('is this digit greater than four?', yes_no(label > 4)),
            ('is this digit less than five?', yes_no(label < 5)),
            ('what digit is this?', DIGIT_NAMES[label])]


def write(folder: str, data_dir=None) -> dict:
    """Writes folder/questions.csv (image, question, answer, split) and the images it names;
    returns {split: rows}."""
    from PIL import Image  # pylint: disable=g-import-not-at-top
    from mmjax.data import builders   # lazy: tensorflow_datasets
    os.makedirs(os.path.join(folder, 'images'), exist_ok=True)
    counts = {}
    with open(os.path.join(folder, 'questions.csv'), 'w', newline='', encoding='utf-8') as f:
        table = csv.writer(f)
        table.writerow(['image', 'question', 'answer', 'split'])
        for split in SPLITS:
            source = builders.data_source('digit_captions', data_dir, split)
            seen = np.zeros(10, np.int64)
            counts[split] = 0
            for row in range(len(source)):
                record = source[row]
                label = int(record['label'])
                name = f'images/{split}_{row:04d}.png'
                Image.fromarray(np.asarray(record['image'])[:, :, 0]).save(os.path.join(folder, name))
                for question, answer in questions(label, int(seen[label])):
                    table.writerow([name, question, answer, split])
                    counts[split] += 1
                seen[label] += 1
    return counts


if __name__ == '__main__':
    if len(sys.argv) != 2:
        sys.exit('usage: python -m mmjax.data.digit_questions OUT_DIR')
    print(write(sys.argv[1]))
