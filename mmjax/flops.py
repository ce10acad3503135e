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
MLM (BERT): embeddings are gathers (no FLOPs); the head runs only at the b·M predicted
slots (M = model.mlm.max_predictions, padding slots included): transform 2·b·M·e², tied
decoder 2·b·M·e·V.
CLIP: patch embedding 2·b·P·(p²·c)·e (2x, no input gradient), one projection 2·b·e·D per
tower, logits 2·2·b²·D (the sharded InfoNCE scores image rows and text rows separately);
the ViT sees P + 1 tokens with a class token.
Not counted: matrix-vector products (the decoder-bias gradient), layer norms, softmax,
activations, the losses, embedding gathers and their
scatter-add gradients, the optimizer update (all linear in tokens or in parameters), and
remat recomputation (MFU is model FLOPs / time, as in PaLM and MaxText).
"""


def encoder_forward(b, length, width, mlp_dim, depth):
    """Forward FLOPs of `depth` layers over b sequences of `length` tokens."""
    tokens = b * length
    return depth * (2 * tokens * 4 * width * width + 2 * tokens * 2 * width * mlp_dim
                    + 4 * b * length * length * width)


def mlm_head_forward(b, text, max_predictions):
    """Forward FLOPs of the MLM head at the b·M predicted slots: transform and tied decoder."""
    e, slots = text.width, b * max_predictions
    return 2 * slots * e * e + 2 * slots * e * text.vocab_size


def mlm_train_flops(b, text, max_predictions):
    """BERT masked-LM step: encoder plus the head at the predicted slots, all 3x."""
    return 3 * (encoder_forward(b, text.context_length, text.width, text.mlp_dim, text.depth)
                + mlm_head_forward(b, text, max_predictions))


def clip_train_flops(b, image, text, image_size, channels, embed_dim):
    """CLIP step: both towers, projections and the two b×b logits 3x; the patch embedding 2x."""
    patches = (image_size // image.patch_size) ** 2
    image_tokens = patches + (image.pool == "cls")
    forward = (encoder_forward(b, image_tokens, image.width, image.mlp_dim, image.depth)
               + encoder_forward(b, text.context_length, text.width, text.mlp_dim, text.depth)
               + 2 * b * (image.width + text.width) * embed_dim + 4 * b * b * embed_dim)
    patch_embed = 2 * b * patches * image.patch_size ** 2 * channels * image.width
    return 3 * forward + 2 * patch_embed
