"""Flax linen modules: attention, transformer blocks, ViT and text towers, CLIP, BERT."""
