"""Analytical training FLOPs of one step: the matmuls and attention the step really computes.

Each task's `train_flops` adds these up; the benchmarks and MFU read them from the task.

A matmul [n, k] @ [k, m] costs 2·n·k·m FLOPs forward; backward costs two more of the same
size (input gradient and weight gradient), so training is 3x forward, except the patch
embedding, whose input (the images) needs no gradient: 2x. One encoder layer over b
sequences of L tokens, width e, MLP width f, forward:

    projections  2·b·L·(3e² + e²)      fused q/k/v and the output projection
    MLP          2·b·L·(2·e·f)         fc1 and fc2
    attention    2·2·b·L²·e            scores q·kᵀ and weights·v, summed over heads

The full L×L square is counted, causal or not: the einsum and XLA paths compute it and
mask (a causal flash kernel would skip about half of it).
Pruned last layer (`model.prune_last_layer`, the default): when the loss reads only n of
the L rows (n = 1 for a class / EOT / [CLS] token, M masked slots for MLM), the last layer
projects k and v at all L rows (2·b·L·2e²) and q, the output projection and the MLP at the
n rows only (2·b·n·(2e² + 2·e·f)); its attention scores are n×L (2·2·b·n·L·e).
MLM (BERT): embeddings are gathers (no FLOPs); the head runs only at the b·M predicted
slots (M = model.mlm.max_predictions, padding slots included): transform 2·b·M·e², tied
decoder 2·b·M·e·V.
LM (GPT): every layer at every row (no pruning: every row predicts), the head (tied or
not) 2·b·L·e·V at all L rows.
RTD (ELECTRA): the generator (the projection of the shared embeddings E -> g, 2·b·L·E·g,
when its width g differs; its encoder, last layer at the M slots when pruned; its head at the
slots, 2·b·M·g·E + 2·b·M·E·V) and the discriminator at all L rows with its head 2·b·L·(e² + e),
all 3x; the sampling is not counted.
CLIP: patch embedding 2·b·P·(p²·c)·e (2x, no input gradient), one projection 2·b·e·D per
tower, logits 2·2·b²·D (the sharded InfoNCE scores image rows and text rows separately);
the ViT sees P + 1 tokens with a class token.
Not counted: matrix-vector products (the decoder-bias gradient), layer norms, softmax,
activations, the losses, embedding gathers and their
scatter-add gradients, the optimizer update (all linear in tokens or in parameters), and
remat recomputation (MFU is model FLOPs / time, as in PaLM and MaxText).
"""


def prunes(model_config):
    """Whether `config.model` prunes the last layer (a config saved before the key: yes)."""
    return model_config.get("prune_last_layer", True)


def encoder_forward(b, length, width, mlp_dim, depth, selected=None):
    """Forward FLOPs of `depth` layers over b sequences of `length` tokens; with `selected`,
    the last layer computes only that many rows per sequence (k and v still at every row)."""
    def layer(rows):
        return (2 * b * length * 2 * width * width + 2 * b * rows * 2 * width * width
                + 2 * b * rows * 2 * width * mlp_dim + 4 * b * rows * length * width)
    return (depth - 1) * layer(length) + layer(length if selected is None else selected)


def mlm_head_forward(b, text, max_predictions):
    """Forward FLOPs of the MLM head at the b·M predicted slots: transform and tied decoder."""
    e, slots = text.width, b * max_predictions
    return 2 * slots * e * e + 2 * slots * e * text.vocab_size


def mlm_train_flops(b, text, max_predictions, prune=True):
    """BERT masked-LM step: encoder (last layer at the M slots when `prune`) plus the head at
    the predicted slots, all 3x."""
    rows = max_predictions if prune else None
    return 3 * (encoder_forward(b, text.context_length, text.width, text.mlp_dim, text.depth, rows)
                + mlm_head_forward(b, text, max_predictions))


def text_pooled_rows(text, prune=True):
    """Rows the text tower's last layer computes for its pooled features (None: all)."""
    return 1 if prune and text.pool in ("eot", "first", "last") else None


def image_pooled_rows(image, prune=True):
    """Rows the ViT's last layer computes for its pooled features (None: all)."""
    return 1 if prune and image.pool == "cls" else None


def clip_train_flops(b, image, text, image_size, channels, embed_dim, prune=True):
    """CLIP step: both towers, projections and the two b×b logits 3x; the patch embedding 2x.
    With `prune`, each tower's last layer runs only at its pooled row (class token, EOT)."""
    patches = (image_size // image.patch_size) ** 2
    image_tokens = patches + (image.pool == "cls")
    forward = (encoder_forward(b, image_tokens, image.width, image.mlp_dim, image.depth,
                               image_pooled_rows(image, prune))
               + encoder_forward(b, text.context_length, text.width, text.mlp_dim, text.depth,
                                 text_pooled_rows(text, prune))
               + 2 * b * (image.width + text.width) * embed_dim + 4 * b * b * embed_dim)
    patch_embed = 2 * b * patches * image.patch_size ** 2 * channels * image.width
    return 3 * forward + 2 * patch_embed


def lm_train_flops(b, text):
    """Causal-LM step: the encoder at all L rows and the vocabulary head at all L rows, 3x."""
    L = text.context_length
    return 3 * (encoder_forward(b, L, text.width, text.mlp_dim, text.depth)
                + 2 * b * L * text.width * text.vocab_size)


def rtd_train_flops(b, text, generator, max_predictions, prune=True):
    """ELECTRA step: `generator` ({width, depth, num_heads, mlp_dim}) at the M masked slots
    (last layer pruned to them when `prune`) and the discriminator `text` tower at every row."""
    L, e, g, m = text.context_length, text.width, generator["width"], max_predictions
    gen = (encoder_forward(b, L, g, generator["mlp_dim"], generator["depth"], m if prune else None)
           + (2 * b * L * e * g if g != e else 0) + 2 * b * m * g * e + 2 * b * m * e * text.vocab_size)
    disc = encoder_forward(b, L, e, text.mlp_dim, text.depth) + 2 * b * L * (e * e + e)
    return 3 * (gen + disc)
