"""Held-out masked-token accuracy, next to always predicting the most frequent token."""

import numpy as np


def most_frequent_token(tokens, special_ids, vocab_size):
    """The most common non-special id in a [n, l] array of token ids."""
    counts = np.bincount(np.asarray(tokens).ravel(), minlength=vocab_size)
    counts[list(special_ids)] = 0
    return int(np.argmax(counts))


def masked_accuracy(predictions, labels, weights, baseline_token):
    """(accuracy, baseline accuracy) over the positions with weight > 0."""
    w = np.asarray(weights) > 0
    return (float(np.mean(np.asarray(predictions)[w] == np.asarray(labels)[w])),
            float(np.mean(np.asarray(labels)[w] == baseline_token)))
