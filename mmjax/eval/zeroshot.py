"""Zero-shot classification: class prompts -> text embeddings -> nearest class per image."""

import numpy as np


def class_embeddings(encode_text, tokenize, class_names, templates):
    """[classes, d]: per class, the L2-normalised mean of its prompts' text embeddings."""
    prompts = [t.format(name) for name in class_names for t in templates]
    z = np.asarray(encode_text(tokenize(prompts)), np.float32)
    z = z.reshape(len(class_names), len(templates), -1).mean(axis=1)
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


def top1_accuracy(image_embeddings, labels, classes):
    """Fraction of images whose most similar class embedding is their label."""
    return float(np.mean(np.argmax(image_embeddings @ classes.T, axis=-1) == labels))
