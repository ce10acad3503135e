"""Weight conversion to and from other ecosystems: one name/shape table per model family."""

# What `mmjax export` writes and `mmjax import` reads: mmjax's own params-only orbax
# checkpoint and safetensors file, and the two reference families (convert/<family>.py).
FORMATS = ("params", "safetensors", "open_clip", "hf_bert", "hf_gpt2", "hf_clip", "hf_siglip",
           "hf_electra", "hf_blip")
