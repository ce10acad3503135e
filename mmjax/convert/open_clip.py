"""open_clip `CLIP` <-> mmjax DualEncoder: model config both ways and the state_dict name table.

On disk an export is open_clip's local-dir layout (`open_clip.create_model('local-dir:OUT')`):
`open_clip_config.json` ({"model_cfg": ..., "preprocess_cfg": ...}) and
`open_clip_pytorch_model.bin` (a torch state_dict). open_clip's ViT is RGB only: a
one-channel mmjax model is exported with its patch kernel spread over R, G, B (divided by 3),
which gives the same outputs for gray images passed as three equal channels.

The preprocess_cfg carries the run's evaluation preprocessing (image size, mean, std, bicubic
resize of the shorter side + centre crop), so open_clip's transforms feed the model what
mmjax's evaluators do; an import reads it back into `data.mean` / `data.std`.
"""

import json
import logging
import os

import numpy as np

from mmjax.convert import layout, torch_io
from mmjax.convert.layout import Rule, attention_out, linear, norm, qkv_fused, same

log = logging.getLogger(__name__)

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_pytorch_model.bin"
DEFAULT_BASE = "smoke_clip.py"  # config file whose training settings an import starts from
SKIP_ON_EXPORT = ("mlm_head/",)  # a 'clip+mlm' model's MLM head has no place in open_clip
IGNORED = ("attn_mask",)
OPTIONAL = ()
LN_EPS = 1e-5  # torch LayerNorm's default, open_clip's unless norm_kwargs says otherwise

# open_clip's defaults (CLIPVisionCfg / CLIPTextCfg) for the keys mmjax reads.
VISION_DEFAULTS = dict(layers=12, width=768, head_width=64, mlp_ratio=4.0, patch_size=16,
                       image_size=224, no_ln_pre=False)
TEXT_DEFAULTS = dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12,
                     mlp_ratio=4.0)
# Settings mmjax does not build: each must have its neutral value (missing = neutral).
VISION_NEUTRAL = dict(ls_init_value=None, attentional_pool=False, pos_embed_type="learnable",
                      pool_type="tok", timm_model_name=None, act_kwargs=None, qk_norm=False,
                      scaled_cosine_attn=False, scale_heads=False, scale_attn_inner=False,
                      scale_attn=False, scale_fc=False)
TEXT_NEUTRAL = dict(ls_init_value=None, embed_cls=False, no_causal_mask=False, pool_type="argmax",
                    proj_type="linear", proj_bias=False, hf_model_name=None, act_kwargs=None,
                    qk_norm=False, scaled_cosine_attn=False, scale_heads=False,
                    scale_attn_inner=False, scale_attn=False, scale_fc=False)
MODEL_NEUTRAL = dict(custom_text=False, multimodal_cfg=None)
# open_clip's PreprocessCfg defaults (what it uses for keys a preprocess_cfg leaves out).
PREPROCESS_DEFAULTS = dict(mean=(0.48145466, 0.4578275, 0.40821073),
                           std=(0.26862954, 0.26130258, 0.27577711),
                           interpolation="bicubic", resize_mode="shortest")
# What mmjax's evaluation transform does (data/images.py EvalImage): no other choice exists.
MMJAX_RESIZE = dict(interpolation="bicubic", resize_mode="shortest")


def _unsupported(cfg, neutral, where):
    bad = [f"{where}{k}={cfg[k]!r}" for k in neutral if cfg.get(k, neutral[k]) != neutral[k]]
    if bad:
        raise ValueError("open_clip settings mmjax does not build: " + ", ".join(bad))


def _eps(cfg):
    return float((cfg.get("norm_kwargs") or {}).get("eps", LN_EPS))


def _mlp_dim(width, ratio):
    return int(width * ratio)


def _square(value, name):
    values = set(value) if isinstance(value, (list, tuple)) else {value}
    if len(values) != 1:
        raise ValueError(f"mmjax builds square images and patches; open_clip's {name} is {value}")
    return values.pop()


def preprocess_config(config):
    """open_clip's preprocess_cfg of an mmjax config: its evaluation images as RGB. A one-channel
    model normalises gray with the means of the RGB statistics (images.normalise), so it gets
    those means on all three channels (exact for gray images passed as three equal channels)."""
    channels = config.data.image_channels

    def stats(values):
        values = np.asarray(values, np.float32)
        return [float(v) for v in (values if len(values) == channels == 3 else [values.mean()] * 3)]

    return {"size": config.data.image_size, "mode": "RGB", "mean": stats(config.data.mean),
            "std": stats(config.data.std), **MMJAX_RESIZE}


def read_preprocess(file_cfg):
    """(mean, std, notes) an open_clip config file's model is fed with: its preprocess_cfg over
    open_clip's defaults; notes name settings mmjax's evaluation transform does not reproduce."""
    cfg = {**PREPROCESS_DEFAULTS, **{k: v for k, v in (file_cfg.get("preprocess_cfg") or {}).items()
                                     if v is not None}}
    notes = [f"preprocess_cfg {k}={cfg[k]!r} (mmjax resizes with {k}={v!r})"
             for k, v in MMJAX_RESIZE.items() if cfg[k] != v]
    rgb = lambda x: tuple(float(v) for v in x) if isinstance(x, (list, tuple)) else (float(x),) * 3
    return rgb(cfg["mean"]), rgb(cfg["std"]), notes


def mmjax_config(ref_config, base):
    """`base` (a locked ConfigDict) with its model and image size set from open_clip's model_cfg;
    `ref_config` is a model_cfg or a local-dir config file ({"model_cfg", "preprocess_cfg"}),
    whose mean / std (open_clip's defaults where it names none) become data.mean / data.std."""
    model_cfg = ref_config.get("model_cfg", ref_config)
    _unsupported(model_cfg, MODEL_NEUTRAL, "")
    v = {**VISION_DEFAULTS, **model_cfg["vision_cfg"]}
    t = {**TEXT_DEFAULTS, **model_cfg["text_cfg"]}
    _unsupported(v, VISION_NEUTRAL, "vision_cfg.")
    _unsupported(t, TEXT_NEUTRAL, "text_cfg.")
    if base.task not in ("clip", "clip+mlm"):
        raise ValueError(f"open_clip weights make a 'clip' model; the base config's task is {base.task!r}")
    size, patch = _square(v["image_size"], "image_size"), _square(v["patch_size"], "patch_size")
    activation = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    config = base.copy_and_resolve_references()
    config.model.embed_dim = model_cfg["embed_dim"]
    config.model.init_logit_bias = model_cfg.get("init_logit_bias")
    if config.model.init_logit_bias is not None:
        config.model.contrastive_loss = "sigmoid"
    config.model.image.update(
        patch_size=patch, width=v["width"], depth=v["layers"], num_heads=v["width"] // v["head_width"],
        mlp_dim=_mlp_dim(v["width"], v["mlp_ratio"]), pool="cls", ln_pre=not v["no_ln_pre"],
        patch_bias=False, pre_norm=True, activation=activation, norm_eps=_eps(v))
    config.model.text.update(
        vocab_size=t["vocab_size"], context_length=t["context_length"], width=t["width"],
        depth=t["layers"], num_heads=t["heads"], mlp_dim=_mlp_dim(t["width"], t["mlp_ratio"]),
        causal=True, pool="eot", pre_norm=True, embed_norm=False, final_norm=True,
        type_vocab_size=0, activation=activation, norm_eps=_eps(t))
    config.data.update(image_size=size, image_channels=3)
    if "model_cfg" in ref_config:
        mean, std, notes = read_preprocess(ref_config)
        config.data.update(mean=mean, std=std)
        if notes:
            log.warning("open_clip import: %s: mmjax's evaluation images will not be open_clip's",
                        "; ".join(notes))
    return config


def reference_config(config):
    """open_clip's model_cfg of an mmjax CLIP config (ValueError naming what does not map)."""
    m, img, txt = config.model, config.model.image, config.model.text
    wanted = {"task": (config.task in ("clip", "clip+mlm"), "'clip' or 'clip+mlm'"),
              "model.image.pool": (img.pool == "cls", "'cls'"),
              "model.image_proj": (m.get("image_proj", True), "True"),
              "model.image.patch_bias": (not img.patch_bias, "False"),
              "model.image.pre_norm": (img.pre_norm, "True"),
              "model.image.activation": (img.activation in ("gelu", "quick_gelu"), "'gelu' or 'quick_gelu'"),
              "model.text.activation": (txt.activation == img.activation, "model.image.activation"),
              "model.text.causal": (txt.causal, "True"), "model.text.pool": (txt.pool == "eot", "'eot'"),
              "model.text.pre_norm": (txt.pre_norm, "True"),
              "model.text.embed_norm": (not txt.embed_norm, "False"),
              "model.text.final_norm": (txt.final_norm, "True"),
              "model.text.type_vocab_size": (txt.type_vocab_size == 0, "0"),
              "data.image_channels": (config.data.image_channels in (1, 3), "1 or 3"),
              # open_clip pools text at argmax(token ids): the end token in CLIP's BPE only.
              "data.tokenizer": (config.data.tokenizer == "clip_bpe", "'clip_bpe'")}
    for tower, name in ((img, "image"), (txt, "text")):
        wanted[f"model.{name}.mlp_dim"] = (_mlp_dim(tower.width, tower.mlp_dim / tower.width) == tower.mlp_dim,
                                           "a multiple open_clip's mlp_ratio reproduces")
    bad = [f"{k} (needs {need})" for k, (ok, need) in wanted.items() if not ok]
    if bad:
        raise ValueError("this model has no open_clip counterpart: " + ", ".join(bad))

    def norm_kwargs(eps):
        return {} if eps == LN_EPS else {"norm_kwargs": {"eps": eps}}

    cfg = {"embed_dim": m.embed_dim, "quick_gelu": img.activation == "quick_gelu",
           "vision_cfg": {"image_size": config.data.image_size, "layers": img.depth, "width": img.width,
                          "head_width": img.width // img.num_heads, "mlp_ratio": img.mlp_dim / img.width,
                          "patch_size": img.patch_size, "no_ln_pre": not img.ln_pre, **norm_kwargs(img.norm_eps)},
           "text_cfg": {"context_length": txt.context_length, "vocab_size": txt.vocab_size,
                        "width": txt.width, "heads": txt.num_heads, "layers": txt.depth,
                        "mlp_ratio": txt.mlp_dim / txt.width, **norm_kwargs(txt.norm_eps)}}
    if m.get("init_logit_bias") is not None:
        cfg["init_logit_bias"] = m.init_logit_bias
    return cfg


def _patch_kernel(patch):
    """patch_embed kernel [(p q c), width] <-> conv1.weight [width, c, p, q] (c=1 -> RGB / 3)."""
    def to_ref(x):
        channels = x.shape[0] // (patch * patch)
        w = x.reshape(patch, patch, channels, x.shape[-1]).transpose(3, 2, 0, 1)
        return (np.repeat(w, 3, axis=1) / 3 if channels == 1 else w,)

    def to_mm(w):
        return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])

    return Rule("image/patch_embed/kernel", ("visual.conv1.weight",), to_ref, to_mm)


def _blocks(tower, ref, depth, heads):
    rules = []
    for i in range(depth):
        mm, r = f"{tower}/encoder/layers_{i}", f"{ref}transformer.resblocks.{i}"
        rules += [*norm(f"{mm}/ln1", f"{r}.ln_1"), *norm(f"{mm}/ln2", f"{r}.ln_2"),
                  *qkv_fused(f"{mm}/attn", f"{r}.attn.in_proj", heads),
                  *attention_out(f"{mm}/attn", f"{r}.attn.out_proj", heads),
                  *linear(f"{mm}/mlp/fc1", f"{r}.mlp.c_fc"), *linear(f"{mm}/mlp/fc2", f"{r}.mlp.c_proj")]
    return rules


def rules(config):
    """The name table for `config`'s model (canonical mmjax layout)."""
    m, img, txt = config.model, config.model.image, config.model.text
    scalar = Rule("logit_scale", ("logit_scale",), lambda x: (x,), lambda x: x.reshape(()))
    table = [_patch_kernel(img.patch_size),
             same("image/cls_token", "visual.class_embedding"),
             same("image/pos_embedding", "visual.positional_embedding"),
             *(norm("image/ln_pre", "visual.ln_pre") if img.ln_pre else []),
             *_blocks("image", "visual.", img.depth, img.num_heads),
             *norm("image/ln_post", "visual.ln_post"),
             same("image_proj/kernel", "visual.proj"),
             same("text/token_embed/embedding", "token_embedding.weight"),
             same("text/pos_embedding", "positional_embedding"),
             *_blocks("text", "", txt.depth, txt.num_heads),
             *norm("text/ln_final", "ln_final"),
             same("text_proj/kernel", "text_projection"),
             scalar]
    if m.get("init_logit_bias") is not None:
        table.append(scalar._replace(mm="logit_bias", ref=("logit_bias",)))
    return table


def prepare(tensors):
    """Reference tensors as the table names them (open_clip's already are)."""
    return tensors


def save(out, model_cfg, tensors, config):
    """Writes open_clip's local-dir layout, with the preprocessing of the run's `config`."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, CONFIG_FILE), "w") as f:
        json.dump({"model_cfg": model_cfg, "preprocess_cfg": preprocess_config(config)}, f, indent=2)
    torch_io.save_pt(layout.contiguous(tensors), os.path.join(out, WEIGHTS_FILE))


def load(src):
    """(config file, tensors) of an open_clip local dir (config JSON + .bin/.pt/.pth/.safetensors);
    the file is {"model_cfg": ..., "preprocess_cfg": ...} (a bare model_cfg is wrapped)."""
    with open(os.path.join(src, CONFIG_FILE)) as f:
        cfg = json.load(f)
    names = sorted(os.listdir(src))
    weights = [n for n in names if n.endswith(".safetensors")] or \
              [n for n in names if n.endswith((".bin", ".pt", ".pth"))]
    if not weights:
        raise FileNotFoundError(f"{src} holds no .bin/.pt/.pth/.safetensors weights next to {CONFIG_FILE}")
    path = os.path.join(src, WEIGHTS_FILE if WEIGHTS_FILE in weights else weights[0])
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        tensors = load_file(path)
    else:
        tensors = torch_io.load_pt(path)
    return cfg if "model_cfg" in cfg else {"model_cfg": cfg}, tensors
