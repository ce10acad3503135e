"""transformers `BertForMaskedLM` / `BertForPreTraining` <-> mmjax BertMlm / BertPreTraining
(task 'mlm' / 'mlm+nsp'): model config both ways and the weight name table.

On disk an export is a transformers model directory: `config.json` and `model.safetensors`
(written with numpy; the decoder is tied to the word embeddings, so it has no tensor of its
own), and the run's tokenizer (`vocab.txt`, `tokenizer.json`, `tokenizer_config.json`). An import also takes `BertModel` weights (no `bert.` prefix, no MLM head, e.g.
sentence-transformers' MiniLM): the MLM head is then initialised fresh. The base config's task
decides the model: 'mlm+nsp' reads the pooler and the NSP head (`bert.pooler.dense`,
`cls.seq_relationship`) when the weights hold them (else they start fresh) and exports them;
'mlm' drops them.
"""

import json
import logging
import os

import numpy as np

from mmjax.convert import layout
from mmjax.convert.layout import attention_out, linear, norm, qkv_separate, same

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_BASE = "smoke_mlm.py"
SKIP_ON_EXPORT = ()
TASKS = ("mlm", "mlm+nsp")
OPTIONAL = ("head/", "nsp_head/")  # absent from BertModel / BertForMaskedLM checkpoints
# Tensors with no mmjax counterpart that an import may drop: buffers, the NSP head and the
# pooler (an 'mlm' model has neither), and the decoder (checked to be tied in `prepare`).
IGNORED = ("bert.embeddings.position_ids", "bert.pooler.dense.weight", "bert.pooler.dense.bias",
           "cls.seq_relationship.weight", "cls.seq_relationship.bias",
           "cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "quick_gelu": "quick_gelu"}
ACTIVATIONS_IN = {**{v: k for k, v in ACTIVATIONS.items()}, "gelu_new": "gelu_tanh"}


def reference_config(config):
    """transformers' BertConfig (as a dict) of an mmjax MLM (+ NSP) config (ValueError naming what does not map)."""
    t = config.model.text
    wanted = {"task": (config.task in TASKS, " or ".join(map(repr, TASKS))),
              "model.text.causal": (not t.causal, "False"),
              "model.text.pre_norm": (not t.pre_norm, "False"),
              "model.text.embed_norm": (t.embed_norm, "True"),
              "model.text.final_norm": (not t.final_norm, "False"),
              "model.text.type_vocab_size": (t.type_vocab_size > 0, "> 0"),
              "model.text.activation": (t.activation in ACTIVATIONS, " or ".join(ACTIVATIONS))}
    bad = [f"{k} (needs {need})" for k, (ok, need) in wanted.items() if not ok]
    if bad:
        raise ValueError("this model has no transformers BERT counterpart: " + ", ".join(bad))
    architecture = "BertForPreTraining" if config.task == "mlm+nsp" else "BertForMaskedLM"
    return {"architectures": [architecture], "model_type": "bert",
            "vocab_size": t.vocab_size, "hidden_size": t.width, "num_hidden_layers": t.depth,
            "num_attention_heads": t.num_heads, "intermediate_size": t.mlp_dim,
            "hidden_act": ACTIVATIONS[t.activation], "max_position_embeddings": t.context_length,
            "type_vocab_size": t.type_vocab_size, "layer_norm_eps": t.norm_eps,
            "pad_token_id": t.get("pad_id", 0), "position_embedding_type": "absolute",
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
            "initializer_range": 0.02, "tie_word_embeddings": True}


def mmjax_config(hf, base):
    """`base` with its text model set from a BertConfig dict."""
    if base.task not in TASKS:
        raise ValueError(f"BERT weights make an 'mlm' or 'mlm+nsp' model; the base config's task "
                         f"is {base.task!r}")
    if base.task == "mlm" and "BertForPreTraining" in (hf.get("architectures") or ()):
        logging.getLogger(__name__).warning(
            "a BertForPreTraining's pooler and NSP head are dropped by an 'mlm' model: import "
            "with --config.task=mlm+nsp to keep them")
    bad = [f"{k}={hf[k]!r}" for k, ok in (
        ("position_embedding_type", lambda v: v == "absolute"), ("is_decoder", lambda v: not v),
        ("hidden_act", lambda v: v in ACTIVATIONS_IN), ("tie_word_embeddings", lambda v: v))
        if k in hf and not ok(hf[k])]
    if bad:
        raise ValueError("BERT settings mmjax does not build: " + ", ".join(bad))
    config = base.copy_and_resolve_references()
    config.model.text.update(
        vocab_size=hf["vocab_size"], context_length=hf.get("max_position_embeddings", 512),
        width=hf["hidden_size"], depth=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
        mlp_dim=hf["intermediate_size"], causal=False, pool="first", pre_norm=False, embed_norm=True,
        final_norm=False, type_vocab_size=hf.get("type_vocab_size", 2),
        activation=ACTIVATIONS_IN[hf.get("hidden_act", "gelu")], norm_eps=float(hf.get("layer_norm_eps", 1e-12)))
    if hf.get("pad_token_id", 0) != config.model.text.get("pad_id", 0):
        raise ValueError(f"pad_token_id={hf['pad_token_id']} but mmjax masks token id "
                         f"{config.model.text.get('pad_id', 0)} as padding")
    return config


def rules(config):
    """The name table for `config`'s model (canonical mmjax layout)."""
    t = config.model.text
    table = [same("text/token_embed/embedding", "bert.embeddings.word_embeddings.weight"),
             same("text/pos_embedding", "bert.embeddings.position_embeddings.weight"),
             same("text/type_embed/embedding", "bert.embeddings.token_type_embeddings.weight"),
             *norm("text/ln_embed", "bert.embeddings.LayerNorm")]
    for i in range(t.depth):
        mm, r = f"text/encoder/layers_{i}", f"bert.encoder.layer.{i}"
        table += [*qkv_separate(f"{mm}/attn", [f"{r}.attention.self.{n}" for n in ("query", "key", "value")],
                                t.num_heads),
                  *attention_out(f"{mm}/attn", f"{r}.attention.output.dense", t.num_heads),
                  *norm(f"{mm}/ln1", f"{r}.attention.output.LayerNorm"),
                  *linear(f"{mm}/mlp/fc1", f"{r}.intermediate.dense"),
                  *linear(f"{mm}/mlp/fc2", f"{r}.output.dense"),
                  *norm(f"{mm}/ln2", f"{r}.output.LayerNorm")]
    table += [*linear("head/transform", "cls.predictions.transform.dense"),
              *norm("head/ln", "cls.predictions.transform.LayerNorm"),
              same("head/output_bias", "cls.predictions.bias")]
    if config.task == "mlm+nsp":
        table += [*linear("nsp_head/pooler", "bert.pooler.dense"),
                  *linear("nsp_head/nsp", "cls.seq_relationship")]
    return table


def prepare(tensors):
    """Names as the table has them (`bert.` added to BertModel's) after checking the decoder is tied."""
    tensors = {k if k.startswith(("bert.", "cls.")) else f"bert.{k}": v for k, v in tensors.items()}
    for name, tied in (("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
                       ("cls.predictions.decoder.bias", "cls.predictions.bias")):
        if name in tensors and tied in tensors and not np.array_equal(tensors[name], tensors[tied]):
            raise ValueError(f"{name} differs from {tied}: mmjax ties the MLM decoder to them")
    return tensors


def save(out, hf_config, tensors, config):
    """Writes a transformers model directory (`config`, the run's, is not needed: text only)."""
    from safetensors.numpy import save_file
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, CONFIG_FILE), "w") as f:
        json.dump(hf_config, f, indent=2)
    save_file(layout.contiguous(tensors), os.path.join(out, WEIGHTS_FILE), metadata={"format": "pt"})


def save_tokenizer(out, tokenizer, max_length):
    """The run's WordPiece tokenizer beside the weights, as transformers reads it:
    `BertTokenizer.from_pretrained(out)` / `AutoTokenizer` tokenise as mmjax does."""
    specials = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                "cls_token": "[CLS]", "mask_token": "[MASK]"}
    files = {"vocab.txt": tokenizer.vocab_text(), "tokenizer.json": tokenizer.to_json(),
             "special_tokens_map.json": json.dumps(specials, indent=2),
             "tokenizer_config.json": json.dumps(
                 {"tokenizer_class": "BertTokenizer", "do_lower_case": True,
                  "tokenize_chinese_chars": True, "strip_accents": None,
                  "model_max_length": max_length, **specials}, indent=2)}
    for name, text in files.items():
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.write(text)


def load(src):
    """(BertConfig dict, tensors) of a transformers model directory (safetensors or pytorch_model.bin)."""
    with open(os.path.join(src, CONFIG_FILE)) as f:
        hf_config = json.load(f)
    path = os.path.join(src, WEIGHTS_FILE)
    if os.path.exists(path):
        from safetensors.numpy import load_file
        return hf_config, load_file(path)
    path = os.path.join(src, "pytorch_model.bin")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{src} holds neither {WEIGHTS_FILE} nor pytorch_model.bin")
    from mmjax.convert import torch_io
    return hf_config, torch_io.load_pt(path)
