"""Named tower sizes and text-tower styles, as dicts a config file merges into `config.model`.

    c.model.image.update(presets.image("B/16"))
    c.model.text.update(presets.text("clip", "B"))

Sizes follow the ViT paper's table (Ti, S, M, B, L, H; "/16" is the patch size) and CLIP's
text towers (width 512 for B, 768 for L); BERT sizes are BERT-base / -large.
"""

# name -> (width, depth, heads, mlp)
VIT_SIZES = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "M": (512, 12, 8, 2048),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
}
CLIP_TEXT_SIZES = {"S": (384, 12, 6, 1536), "B": (512, 12, 8, 2048), "L": (768, 12, 12, 3072)}
BERT_SIZES = {"S": (512, 4, 8, 2048), "B": (768, 12, 12, 3072), "L": (1024, 24, 16, 4096)}
TEXT_STYLES = {
    "clip": dict(causal=True, pool="eot", pre_norm=True, embed_norm=False, final_norm=True,
                 type_vocab_size=0, norm_eps=1e-5),
    "bert": dict(causal=False, pool="first", pre_norm=False, embed_norm=True, final_norm=False,
                 type_vocab_size=2, norm_eps=1e-12),
}


def _size(table, name, what):
    if name not in table:
        raise ValueError(f"unknown {what} size {name!r}; valid: {', '.join(table)}")
    width, depth, heads, mlp = table[name]
    return dict(width=width, depth=depth, num_heads=heads, mlp_dim=mlp)


def image(name: str) -> dict:
    """'B/16' -> the ViT-B keys with patch_size 16."""
    size, _, patch = name.partition("/")
    if not patch.isdigit():
        raise ValueError(f"image preset {name!r} needs a patch size, e.g. 'B/16'")
    return _size(VIT_SIZES, size, "ViT") | dict(patch_size=int(patch))


def text(style: str, size: str | None = None) -> dict:
    """A text tower's style ('clip' | 'bert'), and its size if given ('S', 'B', 'L')."""
    if style not in TEXT_STYLES:
        raise ValueError(f"unknown text style {style!r}; valid: {', '.join(TEXT_STYLES)}")
    out = dict(TEXT_STYLES[style])
    if size is not None:
        out |= _size(CLIP_TEXT_SIZES if style == "clip" else BERT_SIZES, size, f"{style} text")
    return out
