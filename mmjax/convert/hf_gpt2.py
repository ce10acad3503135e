"""transformers `GPT2LMHeadModel` <-> mmjax CausalLM: model config both ways and the weight name table.

On disk an export is a transformers model directory, `config.json` and `model.safetensors`
(written with numpy), that `GPT2LMHeadModel.from_pretrained(DIR)` loads as it is. A tied
head (`model.lm.tie_embeddings`, GPT-2's own) has no tensor of its own; an untied one is
`lm_head.weight` with `tie_word_embeddings: false`. GPT-2's Conv1D weights are [in, out],
as flax kernels are. An import also takes `GPT2Model` weights (no `transformer.` prefix, no
head): only a tied head can then be built.

Tokenizer files (`save_tokenizer`: tokenizer.json + tokenizer_config.json, read by
`AutoTokenizer`) are written for every run: CLIP's BPE, or the run's own learned vocabulary
(byte-level BPE or WordPiece), which the export hands over.
"""

import json
import os

import numpy as np

from mmjax.convert import layout
from mmjax.convert.layout import Rule, norm, same

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
DEFAULT_BASE = "smoke_lm.py"
SKIP_ON_EXPORT = ()
OPTIONAL = ()
# Activations both sides compute the same (transformers' ACT2FN names).
ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "quick_gelu": "quick_gelu"}
ACTIVATIONS_IN = {**{v: k for k, v in ACTIVATIONS.items()}, "gelu_pytorch_tanh": "gelu_tanh"}
IGNORED = ()


def reference_config(config):
    """transformers' GPT2Config (as a dict) of an mmjax 'lm' config (ValueError naming what
    does not map)."""
    t = config.model.text
    wanted = {"task": (config.task == "lm", "'lm'"), "model.text.causal": (t.causal, "True"),
              "model.text.pre_norm": (t.pre_norm, "True"),
              "model.text.final_norm": (t.final_norm, "True"),
              "model.text.embed_norm": (not t.embed_norm, "False"),
              "model.text.type_vocab_size": (t.type_vocab_size == 0, "0"),
              "model.text.position": (t.get("position", "learned") == "learned", "'learned'"),
              "model.text.activation": (t.activation in ACTIVATIONS, " or ".join(ACTIVATIONS))}
    bad = [f"{k} (needs {need})" for k, (ok, need) in wanted.items() if not ok]
    if bad:
        raise ValueError("this model has no transformers GPT-2 counterpart: " + ", ".join(bad))
    # the tokenizers whose start / end ids the config fixes (BPE: data/bpe.py's specials)
    bos, eos = {"clip_bpe": (49406, 49407), "bpe": (1, 2)}.get(config.data.tokenizer, (None, None))
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": t.vocab_size, "n_positions": t.context_length, "n_embd": t.width,
            "n_layer": t.depth, "n_head": t.num_heads, "n_inner": t.mlp_dim,
            "activation_function": ACTIVATIONS[t.activation], "layer_norm_epsilon": t.norm_eps,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": 0.02,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "bos_token_id": bos, "eos_token_id": eos,
            "tie_word_embeddings": bool(config.model.lm.tie_embeddings)}


def mmjax_config(hf, base):
    """`base` (an 'lm' config) with its text model set from a GPT2Config dict."""
    if base.task != "lm":
        raise ValueError(f"GPT-2 weights make an 'lm' model; the base config's task is {base.task!r}")
    bad = [f"{k}={hf[k]!r}" for k, ok in (
        ("activation_function", lambda v: v in ACTIVATIONS_IN),
        ("scale_attn_weights", lambda v: v), ("scale_attn_by_inverse_layer_idx", lambda v: not v),
        ("add_cross_attention", lambda v: not v)) if k in hf and not ok(hf[k])]
    if bad:
        raise ValueError("GPT-2 settings mmjax does not build: " + ", ".join(bad))
    config = base.copy_and_resolve_references()
    width = hf["n_embd"]
    config.model.text.update(
        vocab_size=hf["vocab_size"], context_length=hf["n_positions"], width=width,
        depth=hf["n_layer"], num_heads=hf["n_head"], mlp_dim=hf.get("n_inner") or 4 * width,
        causal=True, pre_norm=True, embed_norm=False, final_norm=True, type_vocab_size=0,
        activation=ACTIVATIONS_IN[hf.get("activation_function", "gelu_new")],
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)))
    config.model.lm.tie_embeddings = bool(hf.get("tie_word_embeddings", True))
    return config


def rules(config):
    """The name table for `config`'s model (canonical mmjax layout)."""
    t = config.model.text
    h = t.num_heads
    table = [same("text/token_embed/embedding", "transformer.wte.weight"),
             same("text/pos_embedding", "transformer.wpe.weight"),
             *norm("text/ln_final", "transformer.ln_f")]
    for i in range(t.depth):
        mm, r = f"text/encoder/layers_{i}", f"transformer.h.{i}"
        table += [
            *norm(f"{mm}/ln1", f"{r}.ln_1"), *norm(f"{mm}/ln2", f"{r}.ln_2"),
            Rule(f"{mm}/attn/qkv_kernel", (f"{r}.attn.c_attn.weight",),
                 lambda x: (x.reshape(x.shape[0], -1),),
                 lambda w: w.reshape(w.shape[0], 3, h, -1)),
            Rule(f"{mm}/attn/qkv_bias", (f"{r}.attn.c_attn.bias",), lambda x: (x.reshape(-1),),
                 lambda b: b.reshape(3, h, -1)),
            Rule(f"{mm}/attn/out_kernel", (f"{r}.attn.c_proj.weight",),
                 lambda x: (x.reshape(-1, x.shape[-1]),), lambda w: w.reshape(h, -1, w.shape[-1])),
            same(f"{mm}/attn/out_bias", f"{r}.attn.c_proj.bias"),
            same(f"{mm}/mlp/fc1/kernel", f"{r}.mlp.c_fc.weight"),
            same(f"{mm}/mlp/fc1/bias", f"{r}.mlp.c_fc.bias"),
            same(f"{mm}/mlp/fc2/kernel", f"{r}.mlp.c_proj.weight"),
            same(f"{mm}/mlp/fc2/bias", f"{r}.mlp.c_proj.bias")]
    if not config.model.lm.tie_embeddings:
        table.append(Rule("lm_head", ("lm_head.weight",), lambda x: (x.T,), lambda w: w.T))
    return table


def prepare(tensors):
    """Names as the table has them (`transformer.` added to GPT2Model's), without the causal-mask
    buffers older checkpoints hold, and `lm_head.weight` dropped when it is the token table
    (a tied head; a head equal to it is the same model tied)."""
    tensors = {k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}": v
               for k, v in tensors.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    head, table = tensors.get("lm_head.weight"), tensors.get("transformer.wte.weight")
    if head is not None and table is not None and np.array_equal(head, table):
        tensors.pop("lm_head.weight")
    return tensors


def save(out, hf_config, tensors, config=None):
    """Writes a transformers model directory; with a 'clip_bpe' run's config (the one tokenizer
    a config fixes), its tokenizer too (`save_tokenizer`)."""
    from safetensors.numpy import save_file
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, CONFIG_FILE), "w") as f:
        json.dump(hf_config, f, indent=2)
    save_file(layout.contiguous(tensors), os.path.join(out, WEIGHTS_FILE), metadata={"format": "pt"})
    if config is not None and config.data.tokenizer == "clip_bpe":
        from mmjax.data.tokenizers import ClipTokenizer
        save_tokenizer(out, ClipTokenizer(), config.model.text.context_length)


def save_tokenizer(out, tokenizer, max_length):
    """An mmjax tokenizer (a `tokenizers` pipeline inside) as `AutoTokenizer.from_pretrained(out)`
    reads it: tokenizer.json + tokenizer_config.json naming its start, end and padding tokens."""
    tok = tokenizer._tok   # noqa: SLF001 (mmjax's tokenizers wrap a `tokenizers.Tokenizer`)
    names = {f"{k}_token": tok.id_to_token(getattr(tokenizer, f"{k}_id")) for k in ("bos", "eos", "pad")}
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tok.to_str())
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
                   **names}, f, indent=2)


def load(src):
    """(GPT2Config dict, tensors) of a transformers model directory (safetensors)."""
    from safetensors.numpy import load_file
    with open(os.path.join(src, CONFIG_FILE)) as f:
        hf_config = json.load(f)
    path = os.path.join(src, WEIGHTS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{src} holds no {WEIGHTS_FILE}; save the model with "
                                f"save_pretrained(DIR, safe_serialization=True)")
    return hf_config, load_file(path)

