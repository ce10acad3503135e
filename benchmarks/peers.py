"""The implementations users would pick instead, on the same shapes: HF Flax/PyTorch, open_clip, big_vision.

Each peer gets the config's sizes, dtype, batch and AdamW settings, the same synthetic
data (MLM: the same 15% masking, done on the host as a data collator would), no dropout,
and each library's own model classes and usual loss: HF's MLM head scores every position,
which is what `*ForMaskedLM` does. Install them with the `[bench]` extra into a separate
environment (benchmarks/README.md); big_vision is a checkout named by $BIG_VISION_DIR
(benchmarks/big_vision_peer.py). A peer that does not import is reported unavailable.
Each record carries the FLOPs per step of the peer's own program (workload.FLOP_COUNTERS):
XLA's cost analysis of the compiled step for the JAX peers, FlopCounterMode for torch.
"""

import resource
import time

import numpy as np

from mmjax.convert.torch_io import import_torch  # torch, with torchvision's ops stubbed on CPU

from benchmarks.workload import (BERT_IDS, flax_peer, malloc_name, stand_in_tokenizer,
                                 synthetic_batches, timing_record)

PEERS = {"mlm": ("hf_flax", "hf_torch", "hf_torch_compiled"),
         "lm": ("hf_flax", "hf_torch", "hf_torch_compiled"),
         "clip": ("hf_flax", "open_clip", "open_clip_compiled", "big_vision")}


def run(impl, config, name, steps, warmup):
    """Times `impl` on `config`; returns the timing record, or {'available': False, ...}."""
    try:
        build = BUILDERS[(config.task, impl.removesuffix("_compiled"))]
        step, version = build(config, compiled=impl.endswith("_compiled"))
    except ImportError as e:
        return {"impl": impl, "available": False, "reason": f"{type(e).__name__}: {e}"}
    start = time.perf_counter()
    step(0)  # JAX peers: the AOT compile already ran in build; torch: lazy init / torch.compile
    first_s = time.perf_counter() - start
    for i in range(1, warmup):
        step(i)
    times = []
    for i in range(steps):
        start = time.perf_counter()
        step(warmup + i)
        times.append(time.perf_counter() - start)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    flops = step.count_flops() if hasattr(step, "count_flops") else step.flops  # after the timing
    record = timing_record(config, name, impl, times, getattr(step, "compile_s", first_s), flops)
    record.update(version=version, first_step_s=first_s, malloc=malloc_name(), peak_rss_mb=peak_rss_mb,
                  param_count=step.param_count)
    return record


def masked_batches(config):
    """Host batches with mmjax's BERT masking applied: ids, and labels (-100 = not predicted)."""
    import jax
    from mmjax.masking import bert_mask
    tok, out = stand_in_tokenizer(config), []
    for i, batch in enumerate(synthetic_batches(config)):
        m = jax.device_get(bert_mask(jax.random.PRNGKey(i), batch["text"], vocab_size=tok.vocab_size,
                                     mask_id=tok.mask_id, special_ids=tok.special_ids,
                                     max_predictions=config.model.mlm.max_predictions,
                                     mask_rate=config.model.mlm.mask_rate))
        labels = np.full(m["inputs"].shape, -100, np.int64)
        rows, slots = np.nonzero(m["weights"])
        labels[rows, m["positions"][rows, slots]] = m["labels"][rows, slots]
        out.append({"input_ids": m["inputs"], "labels": labels,
                    "attention_mask": (m["inputs"] != BERT_IDS["pad"]).astype(np.int64)})
    return out


def hf_bert_config(config):
    from transformers import BertConfig
    t = config.model.text
    return BertConfig(vocab_size=t.vocab_size, hidden_size=t.width, num_hidden_layers=t.depth,
                      num_attention_heads=t.num_heads, intermediate_size=t.mlp_dim, hidden_act="gelu",
                      max_position_embeddings=max(512, t.context_length), type_vocab_size=2,
                      layer_norm_eps=t.norm_eps, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, tie_word_embeddings=True)


def hf_clip_config(config):
    from transformers import CLIPConfig
    m, d = config.model, config.data
    text = dict(vocab_size=m.text.vocab_size, hidden_size=m.text.width, intermediate_size=m.text.mlp_dim,
                num_hidden_layers=m.text.depth, num_attention_heads=m.text.num_heads,
                max_position_embeddings=m.text.context_length, hidden_act="gelu",
                bos_token_id=m.text.vocab_size - 2, eos_token_id=m.text.vocab_size - 1)
    vision = dict(image_size=d.image_size, patch_size=m.image.patch_size, num_channels=d.image_channels,
                  hidden_size=m.image.width, intermediate_size=m.image.mlp_dim,
                  num_hidden_layers=m.image.depth, num_attention_heads=m.image.num_heads,
                  hidden_act="gelu")
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=m.embed_dim)


def hf_gpt2_config(config):
    """The GPT2Config of an mmjax 'lm' config: the export's own mapping (convert/hf_gpt2.py)."""
    from transformers import GPT2Config
    from mmjax.convert import hf_gpt2
    return GPT2Config(**hf_gpt2.reference_config(config))


def lm_batches(config):
    """Full rows of token ids (packed documents), the labels being the ids themselves: each
    library shifts them by one and scores every next token, as mmjax's packed LM does."""
    return [{"input_ids": b["text"].astype(np.int64)} for b in synthetic_batches(config)]


def build_hf_flax_mlm(config, compiled=False):
    import jax.numpy as jnp
    import optax
    import transformers
    from transformers import FlaxBertForMaskedLM
    model = FlaxBertForMaskedLM(hf_bert_config(config), seed=0, dtype=jnp.dtype(config.model.dtype))

    def loss_fn(params, batch):
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=jnp.zeros_like(batch["input_ids"]), params=params).logits
        mask = batch["labels"] != -100
        ce = optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), jnp.where(mask, batch["labels"], 0))
        return (ce * mask).sum() / mask.sum()

    batches = [{k: v.astype(np.int32) for k, v in b.items()} for b in masked_batches(config)]
    return flax_peer(config, model, loss_fn, batches), f"transformers {transformers.__version__}"


def build_hf_flax_clip(config, compiled=False):
    import jax.numpy as jnp
    import optax
    import transformers
    from transformers import FlaxCLIPModel
    model = FlaxCLIPModel(hf_clip_config(config), seed=0, dtype=jnp.dtype(config.model.dtype))

    def loss_fn(params, batch):
        logits = model(batch["text"], batch["image"], params=params).logits_per_image.astype(jnp.float32)
        labels = jnp.arange(logits.shape[0])
        return (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()) / 2

    batches = [{"image": b["image"].transpose(0, 3, 1, 2), "text": b["text"]}  # HF Flax CLIP takes NCHW
               for b in synthetic_batches(config)]
    return flax_peer(config, model, loss_fn, batches), f"transformers {transformers.__version__}"


def build_hf_flax_lm(config, compiled=False):
    import jax.numpy as jnp
    import optax
    import transformers
    from transformers import FlaxGPT2LMHeadModel
    model = FlaxGPT2LMHeadModel(hf_gpt2_config(config), seed=0, dtype=jnp.dtype(config.model.dtype))

    def loss_fn(params, batch):
        ids = batch["input_ids"]
        logits = model(ids, params=params).logits[:, :-1].astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()

    batches = [{k: v.astype(np.int32) for k, v in b.items()} for b in lm_batches(config)]
    return flax_peer(config, model, loss_fn, batches), f"transformers {transformers.__version__}"


def _leading_shapes(count, n):
    """A FlopCounterMode formula that passes the first n argument shapes to `count`."""
    def formula(*shapes, out_shape=None, **kwargs):
        return count(*shapes[:n])
    return formula


def count_torch_flops(run):
    """FLOPs FlopCounterMode counts while `run()` runs (matmuls, convolutions, attention).

    Its table has the CUDA attention kernels but not the CPU one, which SDPA dispatches to on
    CPU (`_scaled_dot_product_flash_attention_for_cpu` and its backward); they get the same
    formulas as the CUDA flash kernel: 2 matmuls forward, 5 backward (the scores recomputed).
    """
    torch = import_torch()
    from torch.utils import flop_counter as fc
    aten = torch.ops.aten
    for op, count, n in ((aten._scaled_dot_product_flash_attention_for_cpu, fc.sdpa_flop_count, 3),
                         (aten._scaled_dot_product_flash_attention_for_cpu_backward,
                          fc.sdpa_backward_flop_count, 4)):  # (grad_out,) query, key, value
        if op not in fc.flop_registry:
            fc.register_flop_formula(op)(_leading_shapes(count, n))
    with fc.FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def torch_peer(config, model, loss_fn, batches, compiled):
    """An eager (or torch.compile'd model) step: forward, loss, backward, AdamW, zero_grad, on
    the GPU when torch sees one (autocast to bfloat16 there too when the config computes in it).
    `step.count_flops()` runs one more step, eager, under count_torch_flops: the compiled
    model does the same matmuls, but its kernels bypass the counter."""
    torch = import_torch()
    device = "cuda" if torch.cuda.is_available() else "cpu"  # as mmjax: the first accelerator
    model = model.to(device)
    o = config.optim
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.b1, o.b2), eps=o.eps,
                            weight_decay=o.weight_decay, fused=device == "cuda")  # the fastest AdamW there
    forward = torch.compile(model) if compiled else model
    batches = [{k: torch.from_numpy(np.array(v)).to(device) for k, v in b.items()} for b in batches]
    bf16 = config.model.dtype == "bfloat16"

    def step(i, forward=forward):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(forward, batches[i % len(batches)])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":  # each timed step ends when its kernels have, as mmjax's does
            torch.cuda.synchronize()

    step.param_count = sum(p.numel() for p in model.parameters())
    step.count_flops = lambda: {"matmul": count_torch_flops(lambda: step(0, model))}
    return step


def build_hf_torch_mlm(config, compiled=False):
    import_torch()
    import transformers
    from transformers import BertForMaskedLM
    model = BertForMaskedLM(hf_bert_config(config)).train()

    def loss_fn(forward, b):
        return forward(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                       labels=b["labels"]).loss

    return (torch_peer(config, model, loss_fn, masked_batches(config), compiled),
            f"transformers {transformers.__version__} ({model.config._attn_implementation})")


def build_hf_torch_lm(config, compiled=False):
    import_torch()
    import transformers
    from transformers import GPT2LMHeadModel
    model = GPT2LMHeadModel(hf_gpt2_config(config)).train()

    def loss_fn(forward, b):
        return forward(input_ids=b["input_ids"], labels=b["input_ids"]).loss

    return (torch_peer(config, model, loss_fn, lm_batches(config), compiled),
            f"transformers {transformers.__version__} ({model.config._attn_implementation})")


def build_open_clip(config, compiled=False):
    import_torch()
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    m, d = config.model, config.data
    vision = CLIPVisionCfg(layers=m.image.depth, width=m.image.width, head_width=m.image.width // m.image.num_heads,
                           mlp_ratio=m.image.mlp_dim / m.image.width, patch_size=m.image.patch_size,
                           image_size=d.image_size)
    text = CLIPTextCfg(context_length=m.text.context_length, vocab_size=m.text.vocab_size,
                       width=m.text.width, heads=m.text.num_heads, layers=m.text.depth,
                       mlp_ratio=m.text.mlp_dim / m.text.width)
    model = CLIP(m.embed_dim, vision, text, quick_gelu=m.image.activation == "quick_gelu").train()
    clip_loss = open_clip.loss.ClipLoss()

    def loss_fn(forward, b):
        image, text_features, scale = forward(b["image"], b["text"])[:3]
        return clip_loss(image.float(), text_features.float(), scale)

    batches = [{"image": b["image"].transpose(0, 3, 1, 2), "text": b["text"].astype(np.int64)}
               for b in synthetic_batches(config)]
    return torch_peer(config, model, loss_fn, batches, compiled), f"open_clip {open_clip.__version__}"


def build_big_vision(config, compiled=False):
    from benchmarks import big_vision_peer  # loaded on use: big_vision is a checkout
    return big_vision_peer.build(config, compiled)


BUILDERS = {("mlm", "hf_flax"): build_hf_flax_mlm, ("mlm", "hf_torch"): build_hf_torch_mlm,
            ("lm", "hf_flax"): build_hf_flax_lm, ("lm", "hf_torch"): build_hf_torch_lm,
            ("clip", "hf_flax"): build_hf_flax_clip, ("clip", "open_clip"): build_open_clip,
            ("clip", "big_vision"): build_big_vision}
