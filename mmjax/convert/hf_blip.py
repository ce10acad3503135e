"""mmjax fused dual encoder (model.fusion kind 'cross', layout 'blip') -> transformers
`BlipForImageTextRetrieval`: model config, the weight name table, and the processor files.

On disk an export is a transformers model directory that `BlipForImageTextRetrieval` and
`BlipProcessor` load as they are: `config.json`, `model.safetensors`, the run's WordPiece
tokenizer (`tokenizer.json`, `vocab.txt`) and `preprocessor_config.json` (BlipImageProcessor:
bicubic resize to the image size, x/255, the run's mean / std; exact for square images as
data.crop='resize' sees them).

The math, checked against transformers' modeling_blip.py / modeling_blip_text.py: the vision
tower is a pre-LN ViT with no pre-norm (`model.image.ln_pre=False`), a patch bias and
`post_layernorm` on every token; the text tower is a post-LN BERT (`pre_norm=False`,
`embed_norm=True`, `final_norm=False`, no token types: word + position embeddings, LayerNorm)
whose layers add a cross-attention (+ add & norm) to the image tokens between self-attention and
the MLP when given them, and attend bidirectionally either way. `itm_score` with use_itm_head is
`itm_head(fused[:, 0])` (mmjax's `itm_logits`); without it, the cosine similarities of
`vision_proj(image_tokens[:, 0])` and `text_proj(text[:, 0])` (mmjax's encode_image /
encode_text with pool 'cls' / 'first'). What BLIP has and mmjax does not is written as zeros:
the projections' biases and, without model.image.patch_bias, the patch bias. One channel is
spread over R, G, B with the luma weights (hf_clip's `patch_kernel`). The logit scale (BLIP's
retrieval model has none) and a 'clip+itm+mlm' model's MLM head are left out.
"""

import json
import os

import numpy as np

from mmjax.convert import hf_clip, layout
from mmjax.convert.hf_clip import ACTIVATIONS, check, write_json
from mmjax.convert.layout import Rule, attention_out, linear, norm, qkv_fused, qkv_separate, same

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "preprocessor_config.json"
DEFAULT_BASE = "smoke_itm.py"
TASKS = ("clip+itm", "clip+itm+mlm")
SKIP_ON_EXPORT = ("mlm_head/", "logit_scale", "logit_bias")
IGNORED = ()
OPTIONAL = ()
BICUBIC = 3


def reference_config(config):
    """transformers' BlipConfig (as a dict) of an mmjax fused config (ValueError naming every
    option that does not map). The token ids are set from the tokenizer by `save_tokenizer`."""
    m, img, txt = config.model, config.model.image, config.model.text
    fusion = m.get("fusion", {})
    check({"task": (config.task in TASKS, " or ".join(map(repr, TASKS))),
           "model.fusion.kind": (fusion.get("kind") == "cross", "'cross'"),
           "model.fusion.layout": (fusion.get("layout") == "blip", "'blip'"),
           "data.tokenizer": (config.data.tokenizer == "wordpiece", "'wordpiece': BLIP's processor is BERT's"),
           "data.image_channels": (config.data.image_channels in (1, 3), "1 or 3"),
           "model.image.pre_norm": (img.pre_norm, "True"),
           "model.image.ln_pre": (not img.ln_pre, "False: BLIP's ViT has no pre-norm"),
           "model.image.pool": (img.pool == "cls", "'cls'"),
           "model.image_proj": (m.get("image_proj", True), "True"),
           "model.image.activation": (img.activation in ACTIVATIONS, " or ".join(ACTIVATIONS)),
           "model.text.pre_norm": (not txt.pre_norm, "False: BLIP's text tower is a post-LN BERT"),
           "model.text.embed_norm": (txt.embed_norm, "True"),
           "model.text.final_norm": (not txt.final_norm, "False"),
           "model.text.type_vocab_size": (txt.type_vocab_size == 0, "0"),
           "model.text.causal": (not txt.causal, "False"),
           "model.text.pool": (txt.pool == "first", "'first'"),
           "model.text.activation": (txt.activation in ACTIVATIONS, " or ".join(ACTIVATIONS))},
          "transformers BLIP")
    return {"architectures": ["BlipForImageTextRetrieval"], "model_type": "blip",
            "projection_dim": m.embed_dim, "image_text_hidden_size": m.embed_dim,
            "text_config": {"vocab_size": txt.vocab_size, "hidden_size": txt.width,
                            "encoder_hidden_size": img.width, "intermediate_size": txt.mlp_dim,
                            "num_hidden_layers": txt.depth, "num_attention_heads": txt.num_heads,
                            "max_position_embeddings": txt.context_length,
                            "hidden_act": ACTIVATIONS[txt.activation], "layer_norm_eps": txt.norm_eps,
                            "is_decoder": True},   # BLIP builds the cross-attention only so
            "vision_config": {"hidden_size": img.width, "intermediate_size": img.mlp_dim,
                              "num_hidden_layers": img.depth, "num_attention_heads": img.num_heads,
                              "image_size": config.data.image_size, "patch_size": img.patch_size,
                              "hidden_act": ACTIVATIONS[img.activation], "layer_norm_eps": img.norm_eps}}


def load(src):
    """Import is not built: the format is written, not read."""
    raise ValueError(f"--format hf_blip is export-only; {src} cannot be imported (mmjax reads no BLIP weights)")


def mmjax_config(hf, base):
    raise ValueError("--format hf_blip is export-only (mmjax reads no BLIP weights)")


def before_export(flat):
    """Zeros for what BLIP has and the model lacks (exact): the patch and projection biases."""
    flat = dict(flat)
    width = flat["image/patch_embed/kernel"].shape[-1]
    flat.setdefault("image/patch_embed/bias", np.zeros(width, np.float32))
    for proj in ("image_proj", "text_proj"):
        flat[f"{proj}/bias"] = np.zeros(flat[f"{proj}/kernel"].shape[-1], np.float32)
    return flat


def heads_linear(mm, ref):
    """kernel [in, h, d] / bias [h, d] <-> torch Linear weight [(h d), in] / bias [(h d)]."""
    return [Rule(f"{mm}_kernel", (f"{ref}.weight",), lambda x: (x.reshape(x.shape[0], -1).T,), None),
            Rule(f"{mm}_bias", (f"{ref}.bias",), lambda x: (x.reshape(-1),), None)]


def rules(config):
    """The name table (export only) for `config`'s model, canonical mmjax layout."""
    img, txt = config.model.image, config.model.text
    v, t = "vision_model", "text_encoder"
    table = [hf_clip.patch_kernel(img.patch_size, f"{v}.embeddings.patch_embedding.weight"),
             same("image/patch_embed/bias", f"{v}.embeddings.patch_embedding.bias"),
             Rule("image/cls_token", (f"{v}.embeddings.class_embedding",), lambda x: (x.reshape(1, 1, -1),), None),
             Rule("image/pos_embedding", (f"{v}.embeddings.position_embedding",), lambda x: (x[None],), None),
             *norm("image/ln_post", f"{v}.post_layernorm")]
    for i in range(img.depth):
        mm, r = f"image/encoder/layers_{i}", f"{v}.encoder.layers.{i}"
        table += [*norm(f"{mm}/ln1", f"{r}.layer_norm1"), *norm(f"{mm}/ln2", f"{r}.layer_norm2"),
                  *[rule._replace(ref=(rule.ref[0].replace("qkv_", "qkv."),))   # a Linear, not in_proj_*
                    for rule in qkv_fused(f"{mm}/attn", f"{r}.self_attn.qkv", img.num_heads)],
                  *attention_out(f"{mm}/attn", f"{r}.self_attn.projection", img.num_heads),
                  *linear(f"{mm}/mlp/fc1", f"{r}.mlp.fc1"), *linear(f"{mm}/mlp/fc2", f"{r}.mlp.fc2")]
    table += [same("text/token_embed/embedding", f"{t}.embeddings.word_embeddings.weight"),
              same("text/pos_embedding", f"{t}.embeddings.position_embeddings.weight"),
              *norm("text/ln_embed", f"{t}.embeddings.LayerNorm")]
    for i in range(txt.depth):
        mm, r = f"text/encoder/layers_{i}", f"{t}.encoder.layer.{i}"
        table += [*qkv_separate(f"{mm}/attn", [f"{r}.attention.self.{n}" for n in ("query", "key", "value")],
                                txt.num_heads),
                  *attention_out(f"{mm}/attn", f"{r}.attention.output.dense", txt.num_heads),
                  *norm(f"{mm}/ln1", f"{r}.attention.output.LayerNorm"),
                  *[rule for n, ref in (("q", "query"), ("k", "key"), ("v", "value"))
                    for rule in heads_linear(f"{mm}/cross_attn/{n}", f"{r}.crossattention.self.{ref}")],
                  *attention_out(f"{mm}/cross_attn", f"{r}.crossattention.output.dense", txt.num_heads),
                  *norm(f"{mm}/ln_cross", f"{r}.crossattention.output.LayerNorm"),
                  *linear(f"{mm}/mlp/fc1", f"{r}.intermediate.dense"),
                  *linear(f"{mm}/mlp/fc2", f"{r}.output.dense"),
                  *norm(f"{mm}/ln2", f"{r}.output.LayerNorm")]
    return table + [*linear("image_proj", "vision_proj"), *linear("text_proj", "text_proj"),
                    *linear("itm_head", "itm_head")]


def prepare(tensors):
    return tensors


def image_processor(config):
    """preprocessor_config.json: BlipImageProcessor resizing to the image size (bicubic), x/255,
    the run's mean / std as RGB (one channel: hf_clip's rule)."""
    clip = hf_clip.image_processor(config)
    size = config.data.image_size
    return {"image_processor_type": "BlipImageProcessor", "do_convert_rgb": True, "do_resize": True,
            "size": {"height": size, "width": size}, "resample": BICUBIC, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": clip["image_mean"],
            "image_std": clip["image_std"], "processor_class": "BlipProcessor"}


def save(out, hf_config, tensors, config):
    """Writes config.json, model.safetensors and the image processor."""
    from safetensors.numpy import save_file
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, CONFIG_FILE), hf_config)
    save_file(layout.contiguous(tensors), os.path.join(out, WEIGHTS_FILE), metadata={"format": "pt"})
    write_json(os.path.join(out, PREPROCESSOR_FILE), image_processor(config))


def save_tokenizer(out, tokenizer, config):
    """The run's WordPiece tokenizer as BlipProcessor reads it, and its ids in text_config."""
    if tokenizer is None:
        raise ValueError("hf_blip carries the run's WordPiece vocabulary, and this run has none; "
                         "train with data.tokenizer='wordpiece'")
    files, (bos, eos, pad) = hf_clip.tokenizer_files(tokenizer, config.model.text.context_length,
                                                     "BlipProcessor", "BertTokenizer")
    files["vocab.txt"] = tokenizer.vocab_text()
    for name, text in files.items():
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.write(text)
    path = os.path.join(out, CONFIG_FILE)
    with open(path) as f:
        hf_config = json.load(f)
    hf_config["text_config"].update(bos_token_id=bos, eos_token_id=eos, sep_token_id=eos, pad_token_id=pad)
    write_json(path, hf_config)
