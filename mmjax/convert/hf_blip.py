"""mmjax fused dual encoder (BLIP's layout) -> transformers `BlipForImageTextRetrieval` (export
only): model config, weight name table, and the run's tokenizer and image preprocessing as
BlipProcessor's files.

On disk: what hf_clip writes (config.json, model.safetensors, tokenizer.json + config,
preprocessor_config.json), for `BlipForImageTextRetrieval` / `BlipProcessor`. The model
scores pairs both ways BLIP does: `use_itm_head=True` gives the ITM head's two logits on the
fused [CLS] (index 1: "matches"), `use_itm_head=False` the cosine similarity of the two
projections.

BLIP's towers (transformers' modeling_blip.py, modeling_blip_text.py) map only from an mmjax
model built like them, which `reference_config` checks in one line:
- the image tower is a pre-LN ViT with a class token, a patch bias and no pre-LN
  (`model.image.ln_pre=False`; the bias is written as zeros when the model has none), whose
  tokens after `ln_post` are both the contrastive features (the class token, projected) and
  the fusion's context;
- the text tower is a post-LN BERT without token types (`pre_norm=False, embed_norm=True,
  final_norm=False, type_vocab_size=0`), bidirectional and read at [CLS] (`causal=False,
  pool='first'`), with cross-attention to the image tokens in every block after
  self-attention (`model.fusion.kind='cross', layout='blip'`: BLIP's one set of text weights);
- BLIP's projections have biases, mmjax's none: written as zeros (the same outputs). Neither
  the logit scale nor an MLM head ('clip+itm+mlm') has a place in the retrieval model.
A one-channel model is exported as RGB like hf_clip's (the patch kernel spread over R, G, B
with Pillow's luma weights), so transformers gives a grey image as RGB what mmjax gives it.
"""

import json
import os

import numpy as np

from mmjax.convert import hf_clip, layout
from mmjax.convert.hf_clip import ACTIVATIONS, check, write_json
from mmjax.convert.layout import Rule, attention_out, linear, norm, qkv_separate, same

CONFIG_FILE, WEIGHTS_FILE, PREPROCESSOR_FILE = hf_clip.CONFIG_FILE, hf_clip.WEIGHTS_FILE, hf_clip.PREPROCESSOR_FILE
DEFAULT_BASE = "smoke_itm.py"
SKIP_ON_EXPORT = ("mlm_head/", "logit_scale", "logit_bias")
IGNORED = ("text_encoder.embeddings.position_ids",)
OPTIONAL = ()
TASKS = ("clip+itm", "clip+itm+mlm")


def reference_config(config):
    """transformers' BlipConfig (as a dict) of an mmjax config built like BLIP (ValueError
    naming every setting that is not)."""
    m, img, txt = config.model, config.model.image, config.model.text
    fusion = m.get("fusion", {})
    check({"task": (config.task in TASKS, " or ".join(map(repr, TASKS))),
           "model.fusion.kind": (fusion.get("kind") == "cross", "'cross'"),
           "model.fusion.layout": (fusion.get("layout") == "blip", "'blip': BLIP's text blocks cross-attend"),
           "model.image.pre_norm": (img.pre_norm, "True"),
           "model.image.pool": (img.pool == "cls", "'cls': BLIP reads the class token"),
           "model.image.ln_pre": (not img.ln_pre, "False: BLIP's ViT has no pre-LN"),
           "model.image_proj": (m.get("image_proj", True), "True: BLIP projects the class token"),
           "model.text.pre_norm": (not txt.pre_norm, "False: BLIP's text encoder is a post-LN BERT"),
           "model.text.embed_norm": (txt.embed_norm, "True"),
           "model.text.final_norm": (not txt.final_norm, "False"),
           "model.text.type_vocab_size": (txt.type_vocab_size == 0, "0: BLIP's text has no token types"),
           "model.text.causal": (not txt.causal, "False: BLIP's text encoder is bidirectional"),
           "model.text.pool": (txt.pool == "first", "'first': BLIP reads [CLS]"),
           "model.image.activation": (img.activation in ACTIVATIONS, " or ".join(ACTIVATIONS)),
           "model.text.activation": (txt.activation in ACTIVATIONS, " or ".join(ACTIVATIONS)),
           "data.tokenizer": (config.data.tokenizer == "wordpiece", "'wordpiece': BLIP's processor is BERT's"),
           "data.image_channels": (config.data.image_channels in (1, 3), "1 or 3")},
          "transformers BLIP")
    return {"architectures": ["BlipForImageTextRetrieval"], "model_type": "blip",
            "projection_dim": m.embed_dim, "image_text_hidden_size": m.embed_dim,
            "text_config": {"vocab_size": txt.vocab_size, "hidden_size": txt.width,
                            "intermediate_size": txt.mlp_dim, "num_hidden_layers": txt.depth,
                            "num_attention_heads": txt.num_heads, "max_position_embeddings": txt.context_length,
                            "hidden_act": ACTIVATIONS[txt.activation], "layer_norm_eps": txt.norm_eps,
                            "encoder_hidden_size": img.width, "is_decoder": True,  # builds the cross-attention
                            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
            "vision_config": {"hidden_size": img.width, "intermediate_size": img.mlp_dim,
                              "num_hidden_layers": img.depth, "num_attention_heads": img.num_heads,
                              "image_size": config.data.image_size, "patch_size": img.patch_size,
                              "hidden_act": ACTIVATIONS[img.activation], "layer_norm_eps": img.norm_eps,
                              "attention_dropout": 0.0}}


def mmjax_config(hf, base):
    raise ValueError("--format hf_blip is export-only: importing BLIP weights is not built")


def before_export(flat):
    """What BLIP has and mmjax may not: a patch bias and projection biases (zeros: the same outputs)."""
    flat = dict(flat)
    zeros = lambda name: np.zeros(flat[name].shape[-1], np.float32)
    flat.setdefault("image/patch_embed/bias", zeros("image/patch_embed/kernel"))
    flat.setdefault("image_proj/bias", zeros("image_proj/kernel"))
    flat.setdefault("text_proj/bias", zeros("text_proj/kernel"))
    return flat


def _vision_qkv(mm, ref, heads):
    """qkv_kernel [e, 3, h, d] / qkv_bias [3, h, d] <-> BLIP's fused `qkv` Linear [(3 h d), e]."""
    return [Rule(f"{mm}/qkv_kernel", (f"{ref}.weight",), lambda x: (x.transpose(1, 2, 3, 0).reshape(-1, x.shape[0]),),
                 lambda w: w.reshape(3, heads, -1, w.shape[-1]).transpose(3, 0, 1, 2)),
            Rule(f"{mm}/qkv_bias", (f"{ref}.bias",), lambda x: (x.reshape(-1),),
                 lambda b: b.reshape(3, heads, -1))]


def _projection(mm, ref, heads):
    """A cross-attention projection kernel [c, h, d] / bias [h, d] <-> torch Linear [(h d), c]."""
    return [Rule(f"{mm}_kernel", (f"{ref}.weight",), lambda x: (x.reshape(x.shape[0], -1).T,),
                 lambda w: w.T.reshape(w.shape[1], heads, -1)),
            Rule(f"{mm}_bias", (f"{ref}.bias",), lambda x: (x.reshape(-1),), lambda b: b.reshape(heads, -1))]


def rules(config):
    """The name table for `config`'s model (canonical mmjax layout, after `before_export`)."""
    img, txt = config.model.image, config.model.text
    out = [hf_clip.patch_kernel(img.patch_size, "vision_model.embeddings.patch_embedding.weight"),
           same("image/patch_embed/bias", "vision_model.embeddings.patch_embedding.bias"),
           Rule("image/cls_token", ("vision_model.embeddings.class_embedding",),
                lambda x: (x.reshape(1, 1, -1),), lambda x: x.reshape(-1)),
           Rule("image/pos_embedding", ("vision_model.embeddings.position_embedding",),
                lambda x: (x[None],), lambda x: x[0]),
           *norm("image/ln_post", "vision_model.post_layernorm"),
           *linear("image_proj", "vision_proj"),
           same("text/token_embed/embedding", "text_encoder.embeddings.word_embeddings.weight"),
           same("text/pos_embedding", "text_encoder.embeddings.position_embeddings.weight"),
           *norm("text/ln_embed", "text_encoder.embeddings.LayerNorm"),
           *linear("text_proj", "text_proj"),
           *linear("itm_head", "itm_head")]
    for i in range(img.depth):
        mm, r = f"image/encoder/layers_{i}", f"vision_model.encoder.layers.{i}"
        out += [*norm(f"{mm}/ln1", f"{r}.layer_norm1"), *norm(f"{mm}/ln2", f"{r}.layer_norm2"),
                *_vision_qkv(f"{mm}/attn", f"{r}.self_attn.qkv", img.num_heads),
                *attention_out(f"{mm}/attn", f"{r}.self_attn.projection", img.num_heads),
                *linear(f"{mm}/mlp/fc1", f"{r}.mlp.fc1"), *linear(f"{mm}/mlp/fc2", f"{r}.mlp.fc2")]
    for i in range(txt.depth):
        mm, r = f"text/encoder/layers_{i}", f"text_encoder.encoder.layer.{i}"
        out += [*qkv_separate(f"{mm}/attn", [f"{r}.attention.self.{n}" for n in ("query", "key", "value")],
                              txt.num_heads),
                *attention_out(f"{mm}/attn", f"{r}.attention.output.dense", txt.num_heads),
                *norm(f"{mm}/ln1", f"{r}.attention.output.LayerNorm"),
                *[rule for t, n in zip("qkv", ("query", "key", "value"))
                  for rule in _projection(f"{mm}/cross_attn/{t}", f"{r}.crossattention.self.{n}", txt.num_heads)],
                *attention_out(f"{mm}/cross_attn", f"{r}.crossattention.output.dense", txt.num_heads),
                *norm(f"{mm}/ln_cross", f"{r}.crossattention.output.LayerNorm"),
                *linear(f"{mm}/mlp/fc1", f"{r}.intermediate.dense"),
                *linear(f"{mm}/mlp/fc2", f"{r}.output.dense"),
                *norm(f"{mm}/ln2", f"{r}.output.LayerNorm")]
    return out


def prepare(tensors):
    return tensors


def image_processor(config):
    """preprocessor_config.json: BlipImageProcessor resizes straight to the image size (no
    crop: what data.crop='resize' does), x/255, the run's mean / std as RGB (hf_clip's rule)."""
    clip = hf_clip.image_processor(config, "BlipImageProcessor")
    size = config.data.image_size
    return {"image_processor_type": "BlipImageProcessor", "do_convert_rgb": True, "do_resize": True,
            "size": {"height": size, "width": size}, "resample": hf_clip.BICUBIC, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": clip["image_mean"],
            "image_std": clip["image_std"], "processor_class": "BlipProcessor"}


def save(out, hf_config, tensors, config):
    """Writes the model directory: config.json, model.safetensors and the image processor."""
    from safetensors.numpy import save_file
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, CONFIG_FILE), hf_config)
    save_file(layout.contiguous(tensors), os.path.join(out, WEIGHTS_FILE), metadata={"format": "pt"})
    write_json(os.path.join(out, PREPROCESSOR_FILE), image_processor(config))


def save_tokenizer(out, tokenizer, config):
    """The run's WordPiece tokenizer beside the weights, its ids in text_config."""
    files, (bos, eos, pad) = hf_clip.tokenizer_files(tokenizer, config.model.text.context_length,
                                                      "BlipProcessor", "BertTokenizer")
    for name, text in files.items():
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.write(text)
    path = os.path.join(out, CONFIG_FILE)
    with open(path) as f:
        hf_config = json.load(f)
    hf_config["text_config"].update(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
                                    sep_token_id=tokenizer.sep_id)
    write_json(path, hf_config)


def load(src):
    return hf_clip.load(src)
