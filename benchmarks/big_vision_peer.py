"""big_vision's two-towers CLIP (ViT + text transformer) as a benchmark peer, from $BIG_VISION_DIR.

big_vision is not on PyPI: clone it (git clone https://github.com/google-research/big_vision)
and point BIG_VISION_DIR at the checkout; without it the peer is reported unavailable.
The model is `big_vision.models.proj.image_text.two_towers.Model` with image_model="vit" and
text_model="proj.image_text.text_transformer", sized from the config; the loss is the
softmax (CLIP) loss of big_vision's contrastive trainer; the update is benchmarks/workload.py's
jitted, donated, ahead-of-time compiled optax AdamW step, on the same synthetic batches.

Where big_vision differs from mmjax's CLIP at the same sizes, it runs as big_vision does:
the text tower attends bidirectionally (no causal mask) and pools the last position (its
tokenizer pads with EOS), the last layer of each tower runs at every position, both towers'
heads have a bias, GELU is the tanh form, and the text tower computes in float32 whatever the
config's dtype (only the ViT takes `dtype_mm`). Its tied vocabulary logits are unused by the
loss and dropped by XLA.
"""

import importlib
import importlib.util
import os
import subprocess
import sys
import types

ENV = "BIG_VISION_DIR"
TWO_TOWERS = "big_vision.models.proj.image_text.two_towers"
POOL = {"cls": "tok", "mean": "gap", "gap": "gap", "map": "map"}  # mmjax image pool -> big_vision


def checkout():
    """The big_vision checkout named by $BIG_VISION_DIR; ImportError (unavailable) if there is none."""
    root = os.environ.get(ENV)
    if not root:
        raise ImportError(f"{ENV} is not set: point it at a big_vision checkout "
                          "(git clone https://github.com/google-research/big_vision)")
    if not os.path.isfile(os.path.join(root, *TWO_TOWERS.split(".")) + ".py"):
        raise ImportError(f"{ENV}={root} is not a big_vision checkout (no {TWO_TOWERS})")
    return os.path.abspath(root)


def utils_stub():
    """Stands in for `big_vision.utils`, which imports TensorFlow (tensorflow.io.gfile) at the top.

    The model modules import it but call it only in their checkpoint `load` functions, which a
    benchmark from random init never runs; any attribute access raises and says why.
    """
    stub = types.ModuleType("big_vision.utils")

    def missing(name):
        raise AttributeError(f"big_vision.utils is stubbed (no TensorFlow here): {name} is only "
                             "used to load checkpoints, which this benchmark does not do")

    stub.__getattr__ = missing
    return stub


def import_two_towers():
    """The two_towers module from the checkout; big_vision.utils stubbed when TensorFlow is missing."""
    root = checkout()
    if root not in sys.path:
        sys.path.insert(0, root)
    if "big_vision.utils" not in sys.modules and importlib.util.find_spec("tensorflow") is None:
        sys.modules["big_vision.utils"] = utils_stub()
    return importlib.import_module(TWO_TOWERS)


def version(root):
    """'big_vision <commit>' of the checkout (or without the commit when it is not a git tree)."""
    done = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"],
                          capture_output=True, text=True)
    return f"big_vision {done.stdout.strip()}" if done.returncode == 0 else "big_vision"


def model_kwargs(config):
    """two_towers.Model arguments for the config's CLIP sizes."""
    m = config.model
    towers = {k: dict(width=m[k].width, depth=m[k].depth, mlp_dim=m[k].mlp_dim,
                      num_heads=m[k].num_heads) for k in ("image", "text")}
    image = dict(towers["image"], patch_size=(m.image.patch_size,) * 2, posemb="learn",
                 pool_type=POOL[m.image.pool], head_zeroinit=False, dtype_mm=m.dtype)
    text = dict(towers["text"], vocab_size=m.text.vocab_size, pool_type="last")
    return dict(image=image, text=text, image_model="vit",
                text_model="proj.image_text.text_transformer", out_dim=m.embed_dim,
                temperature_init=1 / 0.07)


def softmax_loss(zimg, ztxt, t):
    """CLIP's loss as big_vision's contrastive trainer computes it on one device: for each
    direction the rows' logits against all columns, -(diagonal - logsumexp) averaged, halved."""
    import jax
    import jax.numpy as jnp
    loss = 0.0
    for rows, cols in ((zimg, ztxt), (ztxt, zimg)):
        logits = jnp.dot(rows, cols.T) * t
        loss += 0.5 * -(jnp.diag(logits) - jax.scipy.special.logsumexp(logits, axis=-1)).mean()
    return loss


def init_params(model, batch):
    import jax
    return jax.jit(model.init)(jax.random.PRNGKey(0), batch["image"], batch["text"])["params"]


def build(config, compiled=False):
    """(step, version): big_vision's two towers on the config, jitted AdamW step compiled AOT."""
    del compiled  # a JAX peer: always compiled
    from benchmarks.workload import flax_peer, synthetic_batches
    model = import_two_towers().Model(**model_kwargs(config))
    batches = synthetic_batches(config)  # NHWC images, int32 tokens: what big_vision takes

    def loss_fn(params, batch):
        zimg, ztxt, out = model.apply({"params": params}, batch["image"], batch["text"], train=True)
        return softmax_loss(zimg, ztxt, out["t"])

    holder = types.SimpleNamespace(params=init_params(model, batches[0]))
    return flax_peer(config, holder, loss_fn, batches), version(checkout())
