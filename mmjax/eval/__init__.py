"""Evaluation: zero-shot classification, image-text retrieval, masked-token accuracy."""
