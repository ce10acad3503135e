"""transformers ELECTRA <-> mmjax's 'rtd' model: `ElectraForPreTraining` (the discriminator) and
`ElectraForMaskedLM` (the generator), both configs and the weight name table.

On disk an export is two transformers model directories, OUT/discriminator and OUT/generator
(hf_bert's files: config.json, model.safetensors, the run's tokenizer in each). The shared
embeddings (token, position, type tables and their LayerNorm, nn/electra.py) are written into
both; both configs have embedding_size = the discriminator's width, so the generator, when
narrower, carries `electra.embeddings_project`. Reference tensor names in the table are
'discriminator/<name>' and 'generator/<name>'.
"""

import os

import numpy as np

from mmjax.convert import hf_bert
from mmjax.convert.layout import Rule, linear, norm, same

DEFAULT_BASE = "smoke_rtd.py"
PARTS = {"discriminator": "ElectraForPreTraining", "generator": "ElectraForMaskedLM"}
SKIP_ON_EXPORT = ()
OPTIONAL = ()
# Buffers, and the generator's decoder (tied to the token table: checked in `prepare`).
IGNORED = tuple(f"{part}/electra.embeddings.{buffer}" for part in PARTS
                for buffer in ("position_ids", "token_type_ids")) + ("generator/generator_lm_head.weight",)
CONFIG_FILE, WEIGHTS_FILE = hf_bert.CONFIG_FILE, hf_bert.WEIGHTS_FILE


def _sizes(config):
    from mmjax.nn.electra import generator_sizes   # lazy: flax, for a pure-python rule
    return generator_sizes(config.model)


def reference_config(config):
    """{'discriminator': ElectraConfig dict, 'generator': ElectraConfig dict} of an mmjax 'rtd'
    config (ValueError naming what does not map)."""
    if config.task != "rtd":
        raise ValueError(f"--format hf_electra holds an 'rtd' model; this run's task is {config.task!r}")
    as_bert = config.copy_and_resolve_references()
    as_bert.task = "mlm"   # the same text tower checks as BERT's
    bert = hf_bert.reference_config(as_bert)
    common = {k: bert[k] for k in ("vocab_size", "max_position_embeddings", "type_vocab_size",
                                   "layer_norm_eps", "pad_token_id", "hidden_act",
                                   "position_embedding_type", "hidden_dropout_prob",
                                   "attention_probs_dropout_prob", "initializer_range")}
    common |= {"model_type": "electra", "embedding_size": bert["hidden_size"],
               "tie_word_embeddings": True}
    g = _sizes(config)
    return {"discriminator": common | {
                "architectures": [PARTS["discriminator"]], "hidden_size": bert["hidden_size"],
                "num_hidden_layers": bert["num_hidden_layers"],
                "num_attention_heads": bert["num_attention_heads"],
                "intermediate_size": bert["intermediate_size"]},
            "generator": common | {
                "architectures": [PARTS["generator"]], "hidden_size": g["width"],
                "num_hidden_layers": g["depth"], "num_attention_heads": g["num_heads"],
                "intermediate_size": g["mlp_dim"]}}


def mmjax_config(hf, base):
    """`base` (an 'rtd' config) with its model set from the two ElectraConfig dicts."""
    if base.task != "rtd":
        raise ValueError(f"ELECTRA weights make an 'rtd' model; the base config's task is {base.task!r}")
    disc, gen = hf["discriminator"], hf["generator"]
    width = disc["hidden_size"]
    bad = [f"{part} embedding_size={c.get('embedding_size')} (mmjax's shared embeddings are the "
           f"discriminator's width, {width})" for part, c in hf.items()
           if c.get("embedding_size", c["hidden_size"]) != width]
    bad += [f"generator {k}={gen.get(k)!r} (discriminator: {disc.get(k)!r})"
            for k in ("vocab_size", "max_position_embeddings", "type_vocab_size", "hidden_act",
                      "layer_norm_eps", "pad_token_id") if gen.get(k) != disc.get(k)]
    if bad:
        raise ValueError("ELECTRA settings mmjax does not build: " + ", ".join(bad))
    as_mlm = base.copy_and_resolve_references()
    as_mlm.task = "mlm"
    config = hf_bert.mmjax_config({**disc, "tie_word_embeddings": True}, as_mlm)
    config.task = "rtd"
    config.model.text.position = "learned"   # ELECTRA's tables, whatever the base config says
    config.model.rtd.update(generator_width=gen["hidden_size"], generator_depth=gen["num_hidden_layers"],
                            generator_heads=gen["num_attention_heads"],
                            generator_mlp_dim=gen["intermediate_size"])
    return config


def _tower(rules, part, prefix):
    """hf_bert's embedding and encoder rules with reference names under `part`/electra."""
    return [Rule(r.mm.replace("text/", prefix, 1), tuple(f"{part}/electra." + n.removeprefix("bert.")
                                                          for n in r.ref), r.to_ref, r.to_mm)
            for r in rules]


def rules(config):
    """The name table for `config`'s 'rtd' model (canonical mmjax layout)."""
    as_bert = config.copy_and_resolve_references()
    bert = [r for r in hf_bert.rules(as_bert) if all(n.startswith(("bert.embeddings.", "bert.encoder."))
                                                      for n in r.ref)]
    shared = [r for r in bert if r.ref[0].startswith("bert.embeddings.")]
    table = [Rule(r.mm, (f"discriminator/electra.{r.ref[0][5:]}", f"generator/electra.{r.ref[0][5:]}"),
                  lambda x: (x, x), lambda a, b: a) for r in shared]
    table += _tower([r for r in bert if r not in shared], "discriminator", "text/")
    g = _sizes(config)
    gen_config = config.copy_and_resolve_references()
    gen_config.model.text.update(depth=g["depth"], num_heads=g["num_heads"])
    table += _tower([r for r in hf_bert.rules(gen_config) if r.ref[0].startswith("bert.encoder.")],
                    "generator", "generator/")
    if g["width"] != config.model.text.width:
        table += linear("generator/embeddings_project", "generator/electra.embeddings_project")
    return table + [
        *linear("discriminator_head/dense", "discriminator/discriminator_predictions.dense"),
        *linear("discriminator_head/prediction", "discriminator/discriminator_predictions.dense_prediction"),
        *linear("generator/head/transform", "generator/generator_predictions.dense"),
        *norm("generator/head/ln", "generator/generator_predictions.LayerNorm"),
        same("generator/head/output_bias", "generator/generator_lm_head.bias")]


def prepare(tensors):
    """Checks what mmjax holds once is the same in both models: the shared embeddings, and
    the generator's decoder tied to its token table."""
    shared = [n.removeprefix("discriminator/") for n in tensors
              if n.startswith("discriminator/electra.embeddings.") and not n.endswith("_ids")]
    pairs = [(f"discriminator/{n}", f"generator/{n}") for n in shared]
    pairs.append(("generator/generator_lm_head.weight", "generator/electra.embeddings.word_embeddings.weight"))
    for a, b in pairs:
        if a in tensors and b in tensors and not np.array_equal(tensors[a], tensors[b]):
            raise ValueError(f"{a} differs from {b}: mmjax's ELECTRA shares them")
    return tensors


def save(out, hf_config, tensors, config):
    """OUT/discriminator and OUT/generator, transformers model directories."""
    for part in PARTS:
        hf_bert.save(os.path.join(out, part), hf_config[part],
                     {n.split("/", 1)[1]: x for n, x in tensors.items() if n.startswith(part + "/")}, config)


def save_tokenizer(out, tokenizer, max_length):
    """The run's WordPiece tokenizer in both directories (AutoTokenizer loads either)."""
    for part in PARTS:
        os.makedirs(os.path.join(out, part), exist_ok=True)
        hf_bert.save_tokenizer(os.path.join(out, part), tokenizer, max_length)


def load(src):
    """({'discriminator': config, 'generator': config}, 'part/name' tensors) of an export."""
    configs, tensors = {}, {}
    for part in PARTS:
        configs[part], found = hf_bert.load(os.path.join(src, part))
        tensors.update({f"{part}/{n}": x for n, x in found.items()})
    return configs, tensors
