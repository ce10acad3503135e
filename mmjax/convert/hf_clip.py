"""transformers `CLIPModel` <-> mmjax DualEncoder: model config both ways, the weight name table,
and the run's tokenizer and image preprocessing as transformers' processor files.

On disk an export is a transformers model directory that `CLIPModel.from_pretrained` and
`CLIPProcessor.from_pretrained` (or the Auto classes) load as they are: `config.json`,
`model.safetensors`, the tokenizer (`tokenizer.json` with mmjax's own pipeline, so it
tokenises as mmjax does: CLIPTokenizer for CLIP's BPE, BertTokenizer for WordPiece) and
`preprocessor_config.json` (CLIPImageProcessor: bicubic resize of the shorter side to the
image size, centre crop, the run's mean / std).

Differences handled (transformers' modeling_clip.py): CLIP's text tower pools at the first
`eos_token_id`, which is what mmjax's pool='eot' reads (`nn.text.eot_positions`), so the
config names the run's end-of-text id (49407 for CLIP's BPE, [SEP] for WordPiece); an id of 2
would make transformers pool at argmax(ids) instead, and is refused. A patch bias (CLIP has
none) is folded into the patches' position embeddings (exact). CLIP clamps nothing, mmjax
clamps exp(logit_scale) at 100: the export writes the clamped value. transformers' CLIP is
RGB: a one-channel model's patch kernel is spread over R, G, B with Pillow's luma weights
(ITU-R 601: 0.299, 0.587, 0.114), so a grey image given as RGB gives the same embedding as
mmjax gives it (and a colour one what mmjax gives its 'L' conversion, up to rounding), with
the means of the RGB statistics on all three channels.
"""

import json
import math
import os

import numpy as np

from mmjax.convert import layout
from mmjax.convert.layout import Rule, attention_out, linear, norm, qkv_separate, same

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "preprocessor_config.json"
DEFAULT_BASE = "smoke_clip.py"
SKIP_ON_EXPORT = ("mlm_head/",)  # a 'clip+mlm' model's MLM head has no place in CLIPModel
IGNORED = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")
OPTIONAL = ()
LUMA = np.array([0.299, 0.587, 0.114])   # Pillow's RGB -> 'L' weights
MAX_SCALE = 100.0                         # nn.clip.DualEncoder.max_scale
CLIP_BPE_VOCAB = 49408
BICUBIC = 3                               # PIL.Image.BICUBIC, transformers' `resample`
ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}
ACTIVATIONS_IN = {**{v: k for k, v in ACTIVATIONS.items()}, "gelu_new": "gelu_tanh"}


def check(wanted, what):
    """A ValueError naming every `{key: (ok, needs)}` that is not ok."""
    bad = [f"{k} (needs {need})" for k, (ok, need) in wanted.items() if not ok]
    if bad:
        raise ValueError(f"this model has no {what} counterpart: " + ", ".join(bad))


def common_checks(config):
    """What both transformers dual encoders need of a run's config."""
    img = config.model.image
    return {"task": (config.task in ("clip", "clip+mlm"), "'clip' or 'clip+mlm'"),
            "model.image.pre_norm": (img.pre_norm, "True"),
            "model.text.pre_norm": (config.model.text.pre_norm, "True"),
            "model.text.embed_norm": (not config.model.text.embed_norm, "False"),
            "model.text.final_norm": (config.model.text.final_norm, "True"),
            "model.text.type_vocab_size": (config.model.text.type_vocab_size == 0, "0"),
            "model.image.activation": (img.activation in ACTIVATIONS, " or ".join(ACTIVATIONS)),
            "model.text.activation": (config.model.text.activation in ACTIVATIONS, " or ".join(ACTIVATIONS)),
            "data.image_channels": (config.data.image_channels in (1, 3), "1 or 3")}


def reference_config(config):
    """transformers' CLIPConfig (as a dict) of an mmjax CLIP config (ValueError naming what does
    not map). The token ids are CLIP's BPE's; `save_tokenizer` writes a WordPiece run's."""
    m, img, txt = config.model, config.model.image, config.model.text
    check({**common_checks(config),
           "model.image.pool": (img.pool == "cls", "'cls': CLIP reads the class token"),
           "model.image.ln_pre": (img.ln_pre, "True: CLIP always has pre_layrnorm"),
           "model.image_proj": (m.get("image_proj", True), "True: CLIP projects the pooled image features"),
           "model.text.causal": (txt.causal, "True: CLIP's text attention is causal"),
           "model.text.pool": (txt.pool == "eot", "'eot': CLIP reads the first end-of-text token")},
          "transformers CLIP")
    ids = dict(bos_token_id=CLIP_BPE_VOCAB - 2, eos_token_id=CLIP_BPE_VOCAB - 1, pad_token_id=CLIP_BPE_VOCAB - 1)
    return {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": m.embed_dim,
            "logit_scale_init_value": math.log(1 / 0.07),
            "text_config": {"vocab_size": txt.vocab_size, "hidden_size": txt.width,
                            "intermediate_size": txt.mlp_dim, "projection_dim": m.embed_dim,
                            "num_hidden_layers": txt.depth, "num_attention_heads": txt.num_heads,
                            "max_position_embeddings": txt.context_length,
                            "hidden_act": ACTIVATIONS[txt.activation], "layer_norm_eps": txt.norm_eps, **ids},
            "vision_config": {"hidden_size": img.width, "intermediate_size": img.mlp_dim,
                              "projection_dim": m.embed_dim, "num_hidden_layers": img.depth,
                              "num_attention_heads": img.num_heads, "num_channels": 3,
                              "image_size": config.data.image_size, "patch_size": img.patch_size,
                              "hidden_act": ACTIVATIONS[img.activation], "layer_norm_eps": img.norm_eps}}


def mmjax_config(hf, base):
    """`base` with its model, image size and mean / std set from a CLIPConfig dict (merged with
    the folder's preprocessor config under 'preprocessor', when it has one)."""
    if base.task not in ("clip", "clip+mlm"):
        raise ValueError(f"CLIP weights make a 'clip' model; the base config's task is {base.task!r}")
    t, v = hf["text_config"], hf["vision_config"]
    for name, tower in (("text_config", t), ("vision_config", v)):
        if tower.get("hidden_act", "quick_gelu") not in ACTIVATIONS_IN:
            raise ValueError(f"CLIP settings mmjax does not build: {name}.hidden_act={tower['hidden_act']!r}")
    if t.get("eos_token_id", 2) == 2 and t.get("vocab_size", CLIP_BPE_VOCAB) != CLIP_BPE_VOCAB:
        raise ValueError("text_config.eos_token_id=2 makes transformers' CLIP pool text at argmax(ids), "
                         "the end token in CLIP's BPE only; mmjax pools at the first end-of-text id: "
                         "set eos_token_id to it")
    config = base.copy_and_resolve_references()
    config.model.embed_dim = hf.get("projection_dim", 512)
    config.model.init_logit_bias = None
    config.model.image.update(
        patch_size=v.get("patch_size", 32), width=v.get("hidden_size", 768), depth=v.get("num_hidden_layers", 12),
        num_heads=v.get("num_attention_heads", 12), mlp_dim=v.get("intermediate_size", 3072), pool="cls",
        ln_pre=True, patch_bias=False, pre_norm=True, activation=ACTIVATIONS_IN[v.get("hidden_act", "quick_gelu")],
        norm_eps=float(v.get("layer_norm_eps", 1e-5)), position="learned")
    config.model.text.update(
        vocab_size=t.get("vocab_size", CLIP_BPE_VOCAB), context_length=t.get("max_position_embeddings", 77),
        width=t.get("hidden_size", 512), depth=t.get("num_hidden_layers", 12),
        num_heads=t.get("num_attention_heads", 8), mlp_dim=t.get("intermediate_size", 2048), causal=True,
        pool="eot", pre_norm=True, embed_norm=False, final_norm=True, type_vocab_size=0,
        activation=ACTIVATIONS_IN[t.get("hidden_act", "quick_gelu")],
        norm_eps=float(t.get("layer_norm_eps", 1e-5)), position="learned")
    # CLIP's BPE has its own vocabulary size; any other is a WordPiece whose vocab.txt the folder carries.
    config.data.tokenizer = "clip_bpe" if config.model.text.vocab_size == CLIP_BPE_VOCAB else "wordpiece"
    config.data.update(image_size=v.get("image_size", 224), image_channels=3)
    pre = hf.get("preprocessor") or {}
    if "image_mean" in pre:
        config.data.update(mean=tuple(map(float, pre["image_mean"])), std=tuple(map(float, pre["image_std"])))
    return config


def patch_kernel(patch, ref):
    """patch_embed kernel [(p q c), width] <-> Conv2d weight [width, 3, p, q]; one channel is
    spread over R, G, B with the luma weights (import reads an RGB kernel as 3 channels)."""
    def to_ref(x):
        channels = x.shape[0] // (patch * patch)
        w = x.reshape(patch, patch, channels, x.shape[-1]).transpose(3, 2, 0, 1)
        return (w * LUMA[:, None, None].astype(w.dtype) if channels == 1 else w,)

    def to_mm(w):
        return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])

    return Rule("image/patch_embed/kernel", (ref,), to_ref, to_mm)


def before_export(flat):
    """A patch bias added to every patch token, moved into the patches' position embeddings
    (rows after the class token's): the same sums, for a reference with no patch bias."""
    flat = dict(flat)
    bias = flat.pop("image/patch_embed/bias", None)
    if bias is not None:
        pos = np.array(flat["image/pos_embedding"])
        pos[-(pos.shape[0] - ("image/cls_token" in flat)):] += bias
        flat["image/pos_embedding"] = pos
    return flat


def blocks(tower, ref, depth, heads):
    """The encoder layers: CLIP's and SigLIP's (q, k, v, out projections; layer_norm1/2; fc1/2)."""
    rules = []
    for i in range(depth):
        mm, r = f"{tower}/encoder/layers_{i}", f"{ref}.encoder.layers.{i}"
        rules += [*norm(f"{mm}/ln1", f"{r}.layer_norm1"), *norm(f"{mm}/ln2", f"{r}.layer_norm2"),
                  *qkv_separate(f"{mm}/attn", [f"{r}.self_attn.{n}_proj" for n in "qkv"], heads),
                  *attention_out(f"{mm}/attn", f"{r}.self_attn.out_proj", heads),
                  *linear(f"{mm}/mlp/fc1", f"{r}.mlp.fc1"), *linear(f"{mm}/mlp/fc2", f"{r}.mlp.fc2")]
    return rules


def rules(config):
    """The name table for `config`'s model (canonical mmjax layout, the patch bias folded)."""
    img, txt = config.model.image, config.model.text
    clamp = math.log(MAX_SCALE)
    return [patch_kernel(img.patch_size, "vision_model.embeddings.patch_embedding.weight"),
            same("image/cls_token", "vision_model.embeddings.class_embedding"),
            same("image/pos_embedding", "vision_model.embeddings.position_embedding.weight"),
            *norm("image/ln_pre", "vision_model.pre_layrnorm"),
            *blocks("image", "vision_model", img.depth, img.num_heads),
            *norm("image/ln_post", "vision_model.post_layernorm"),
            *linear("image_proj", "visual_projection", bias=False),
            same("text/token_embed/embedding", "text_model.embeddings.token_embedding.weight"),
            same("text/pos_embedding", "text_model.embeddings.position_embedding.weight"),
            *blocks("text", "text_model", txt.depth, txt.num_heads),
            *norm("text/ln_final", "text_model.final_layer_norm"),
            *linear("text_proj", "text_projection", bias=False),
            Rule("logit_scale", ("logit_scale",), lambda x: (np.minimum(x, np.float32(clamp)),),
                 lambda x: x.reshape(()))]


def prepare(tensors):
    """Reference tensors as the table names them (transformers' already are)."""
    return tensors


def image_processor(config, kind="CLIPImageProcessor"):
    """preprocessor_config.json of the run's evaluation images, as RGB: resize the shorter side
    to the image size (bicubic), centre crop, x/255, the mean / std (one channel: the means of
    the RGB statistics on all three, as `data.images.normalise` uses them)."""
    size, channels = config.data.image_size, config.data.image_channels

    def stats(values):
        values = np.asarray(values, np.float64)
        return [float(x) for x in (values if len(values) == channels == 3 else [values.mean()] * 3)]

    return {"image_processor_type": kind, "do_convert_rgb": True, "do_resize": True,
            "size": {"shortest_edge": size}, "resample": BICUBIC, "do_center_crop": True,
            "crop_size": {"height": size, "width": size}, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": stats(config.data.mean), "image_std": stats(config.data.std)}


def write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)


def save(out, hf_config, tensors, config):
    """Writes the model directory: config.json, model.safetensors and the image processor."""
    from safetensors.numpy import save_file
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, CONFIG_FILE), hf_config)
    save_file(layout.contiguous(tensors), os.path.join(out, WEIGHTS_FILE), metadata={"format": "pt"})
    write_json(os.path.join(out, PREPROCESSOR_FILE), {**image_processor(config), "processor_class": "CLIPProcessor"})


def tokenizer_files(tokenizer, max_length, processor_class, tokenizer_class=None):
    """{file name: text} of the run's tokenizer as transformers reads it (`tokenizer` None:
    CLIP's BPE) and the (bos, eos, pad) ids the model config names. tokenizer.json carries
    mmjax's own normaliser, pre-tokeniser and model, and adds the start and end tokens as
    mmjax's `encode` does; the class only names it (transformers v5 builds it from the file)."""
    from tokenizers import Tokenizer, processors
    from mmjax.data.tokenizers import ClipTokenizer
    if tokenizer is None or isinstance(tokenizer, ClipTokenizer):
        clip = ClipTokenizer()
        tok = Tokenizer.from_str(clip._tok.to_str())
        tok.post_processor = processors.TemplateProcessing(
            single="<|startoftext|> $A <|endoftext|>",
            special_tokens=[("<|startoftext|>", clip.sot_id), ("<|endoftext|>", clip.eot_id)])
        # mmjax pads with id 0 ('!'); a special '!' would split '!!' in every text, so transformers
        # pads with the end token: the pooled row (the first end token) is the same.
        specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                    "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
        ids = (clip.sot_id, clip.eot_id, clip.eot_id)
        text, cls = tok.to_str(), tokenizer_class or "CLIPTokenizer"
    else:
        specials = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                    "cls_token": "[CLS]", "mask_token": "[MASK]", "bos_token": "[CLS]", "eos_token": "[SEP]"}
        ids = (tokenizer.cls_id, tokenizer.eot_id, tokenizer.pad_id)
        text, cls = tokenizer.to_json(), tokenizer_class or "BertTokenizer"
    config = {"tokenizer_class": cls, "model_max_length": max_length, "processor_class": processor_class,
              "model_input_names": ["input_ids", "attention_mask"], **specials}
    return {"tokenizer.json": text, "tokenizer_config.json": json.dumps(config, indent=2),
            "special_tokens_map.json": json.dumps(specials, indent=2)}, ids


def save_tokenizer(out, tokenizer, config):
    """The run's tokenizer files beside the weights, and its token ids in config.json's
    text_config (CLIP's text tower pools at the first eos_token_id: the run's end of text)."""
    files, (bos, eos, pad) = tokenizer_files(tokenizer, config.model.text.context_length, "CLIPProcessor")
    if eos == 2:
        raise ValueError("the tokenizer's end-of-text id is 2, which transformers' CLIP reads as "
                         "'pool at argmax(ids)'; export with --format params or safetensors")
    for name, text in files.items():
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.write(text)
    set_token_ids(out, bos, eos, pad)


def set_token_ids(out, bos, eos, pad):
    """The tokenizer's ids in OUT/config.json's text_config."""
    path = os.path.join(out, CONFIG_FILE)
    with open(path) as f:
        hf_config = json.load(f)
    hf_config["text_config"].update(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    write_json(path, hf_config)


def load(src):
    """(CLIPConfig dict with the preprocessor config under 'preprocessor', tensors) of a
    transformers CLIP directory (model.safetensors or pytorch_model.bin)."""
    with open(os.path.join(src, CONFIG_FILE)) as f:
        hf_config = json.load(f)
    pre = os.path.join(src, PREPROCESSOR_FILE)
    if os.path.exists(pre):
        with open(pre) as f:
            hf_config["preprocessor"] = json.load(f)
    path = os.path.join(src, WEIGHTS_FILE)
    if os.path.exists(path):
        from safetensors.numpy import load_file
        return hf_config, load_file(path)
    path = os.path.join(src, "pytorch_model.bin")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{src} holds neither {WEIGHTS_FILE} nor pytorch_model.bin")
    from mmjax.convert import torch_io
    return hf_config, torch_io.load_pt(path)
