"""mmjax DualEncoder -> transformers `SiglipModel` (export only): model config, weight name table,
and the run's tokenizer and image preprocessing as SiglipProcessor's files.

On disk: what hf_clip writes (config.json, model.safetensors, tokenizer.json + config,
preprocessor_config.json), for `SiglipModel` / `SiglipProcessor` / the Auto classes.

SigLIP's towers (transformers' modeling_siglip.py) differ from CLIP's, and an mmjax model
maps only when it is built like them: the image tower has no class token and no pre-LN, a
patch bias, an LN on every patch and attention pooling (`model.image.pool='map'`,
`ln_pre=False`), and no image projection (`model.image_proj=False`: the pooled features are
the embedding); the text tower is bidirectional and reads the last position of the padded row
(`model.text.causal=False`, `pool='last'`) through a projection with a bias (written as
zeros). transformers computes logits as exp(logit_scale) * cos + logit_bias, unclamped: the
export writes mmjax's clamp at 100 and a bias of 0 for an InfoNCE run.

The text contract is SigLIP's own: tokenise with `padding="max_length"` (the model card's
instruction), so the last position is the one mmjax reads, and pass the attention mask (a
processor's output does), as mmjax masks padding. That needs a padding token that is only
padding: WordPiece's [PAD] (id 0). CLIP's BPE pads with id 0, which is '!', a real token:
transformers cannot pad with it without splitting every '!' out of the text, so a clip_bpe
run is refused (export it with --format hf_clip).
"""

import math
import os

import numpy as np

from mmjax.convert import hf_clip, layout
from mmjax.convert.hf_clip import ACTIVATIONS, check, write_json
from mmjax.convert.layout import Rule, attention_out, linear, norm, qkv_fused, same

CONFIG_FILE, WEIGHTS_FILE, PREPROCESSOR_FILE = hf_clip.CONFIG_FILE, hf_clip.WEIGHTS_FILE, hf_clip.PREPROCESSOR_FILE
DEFAULT_BASE = "smoke_clip.py"
SKIP_ON_EXPORT = ("mlm_head/",)
IGNORED = hf_clip.IGNORED
OPTIONAL = ()


def reference_config(config):
    """transformers' SiglipConfig (as a dict) of an mmjax config built like SigLIP's towers
    (ValueError naming every setting that is not)."""
    m, img, txt = config.model, config.model.image, config.model.text
    check({**hf_clip.common_checks(config),
           "model.image.pool": (img.pool == "map", "'map': SigLIP pools images by attention"),
           "model.image.ln_pre": (not img.ln_pre, "False: SigLIP has no pre-LN"),
           "model.image_proj": (not m.get("image_proj", True), "False: SigLIP's image embedding is the pooled features"),
           "model.text.causal": (not txt.causal, "False: SigLIP's text attention is bidirectional"),
           "model.text.pool": (txt.pool == "last", "'last': SigLIP reads the last position"),
           "data.tokenizer": (config.data.tokenizer == "wordpiece",
                              "'wordpiece': CLIP's BPE pads with '!', a token transformers cannot pad with")},
          "transformers SigLIP")
    tower = lambda t: {"hidden_size": t.width, "intermediate_size": t.mlp_dim, "num_hidden_layers": t.depth,
                       "num_attention_heads": t.num_heads, "hidden_act": ACTIVATIONS[t.activation],
                       "layer_norm_eps": t.norm_eps}
    return {"architectures": ["SiglipModel"], "model_type": "siglip",
            "text_config": {**tower(txt), "vocab_size": txt.vocab_size, "projection_size": m.embed_dim,
                            "max_position_embeddings": txt.context_length},
            "vision_config": {**tower(img), "num_channels": 3, "image_size": config.data.image_size,
                              "patch_size": img.patch_size, "vision_use_head": True}}


def mmjax_config(hf, base):
    raise ValueError("--format hf_siglip is export-only: import SigLIP weights is not built; "
                     "transformers CLIP weights import with --format hf_clip")


def before_export(flat):
    """What SigLIP has and mmjax may not: a patch bias, a text projection bias, a logit bias
    (zeros: the same outputs)."""
    flat = dict(flat)
    width = flat["image/patch_embed/kernel"].shape[-1]
    flat.setdefault("image/patch_embed/bias", np.zeros(width, np.float32))
    flat.setdefault("text_proj/bias", np.zeros(flat["text_proj/kernel"].shape[-1], np.float32))
    flat.setdefault("logit_bias", np.zeros((), np.float32))
    return flat


def _scalar(mm, clamp=None):
    def to_ref(x):
        return (np.reshape(x if clamp is None else np.minimum(x, np.float32(clamp)), (1,)),)
    return Rule(mm, (mm,), to_ref, lambda x: x.reshape(()))


def rules(config):
    """The name table for `config`'s model (canonical mmjax layout, after `before_export`)."""
    img, txt = config.model.image, config.model.text
    head = "vision_model.head"
    return [hf_clip.patch_kernel(img.patch_size, "vision_model.embeddings.patch_embedding.weight"),
            same("image/patch_embed/bias", "vision_model.embeddings.patch_embedding.bias"),
            same("image/pos_embedding", "vision_model.embeddings.position_embedding.weight"),
            *hf_clip.blocks("image", "vision_model", img.depth, img.num_heads),
            *norm("image/ln_post", "vision_model.post_layernorm"),
            Rule("image/map_head/probe", (f"{head}.probe",), lambda x: (x.reshape(1, 1, -1),),
                 lambda x: x.reshape(-1)),
            *qkv_fused("image/map_head", f"{head}.attention.in_proj", img.num_heads),
            *attention_out("image/map_head", f"{head}.attention.out_proj", img.num_heads),
            *norm("image/map_head/ln", f"{head}.layernorm"),
            *linear("image/map_head/mlp/fc1", f"{head}.mlp.fc1"),
            *linear("image/map_head/mlp/fc2", f"{head}.mlp.fc2"),
            same("text/token_embed/embedding", "text_model.embeddings.token_embedding.weight"),
            same("text/pos_embedding", "text_model.embeddings.position_embedding.weight"),
            *hf_clip.blocks("text", "text_model", txt.depth, txt.num_heads),
            *norm("text/ln_final", "text_model.final_layer_norm"),
            *linear("text_proj", "text_model.head"),
            _scalar("logit_scale", math.log(hf_clip.MAX_SCALE)), _scalar("logit_bias")]


def prepare(tensors):
    return tensors


def save(out, hf_config, tensors, config):
    """Writes the model directory: config.json, model.safetensors and the image processor."""
    from safetensors.numpy import save_file
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, CONFIG_FILE), hf_config)
    save_file(layout.contiguous(tensors), os.path.join(out, WEIGHTS_FILE), metadata={"format": "pt"})
    write_json(os.path.join(out, PREPROCESSOR_FILE),
               {**hf_clip.image_processor(config, "SiglipImageProcessor"), "processor_class": "SiglipProcessor"})


def save_tokenizer(out, tokenizer, config):
    """The run's WordPiece tokenizer beside the weights, its token ids in text_config."""
    files, (bos, eos, pad) = hf_clip.tokenizer_files(tokenizer, config.model.text.context_length,
                                                      "SiglipProcessor")
    for name, text in files.items():
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.write(text)
    hf_clip.set_token_ids(out, bos, eos, pad)


def load(src):
    return hf_clip.load(src)
