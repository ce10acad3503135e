"""Use a trained or imported model from Python:

    import mmjax
    model = mmjax.load("runs/smoke_clip")          # a workdir, a params export or an open_clip dir
    z_image = model.encode_image(images)            # uint8 arrays, encoded bytes or PIL images -> [n, d]
    z_text = model.encode_text(["a photo of the digit seven"])
    probs = (100 * z_image @ z_text.T)              # embeddings are L2-normalised

Inputs go through the evaluators' own transforms (resize + centre crop to the model's image
size and channels, the config's mean/std, its tokenizer), in jitted fixed-size batches on
the default device (CPU, GPU or TPU). MLM models have `fill_mask(text)` instead; causal
LMs `generate(prompts, max_new_tokens=32, temperature=1.0, top_k=0, top_p=1.0, seed=0)`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np

from mmjax import paths, tasks
from mmjax.data import DEFAULT_DATA_DIR
from mmjax.data import images as image_ops
from mmjax.data import vocab


def load(path: str, step: int | None = None, data_dir: str = DEFAULT_DATA_DIR,
         batch_size: int = 64) -> Model:
    """The model of a workdir (its newest checkpoint, or `step`), of a params export, of an
    open_clip local dir (its preprocess_cfg's mean / std included) or of a transformers CLIP
    directory (its preprocessor config's mean / std included), with the run's tokenizer:
    the vocab.txt beside the checkpoints or in the export (`data_dir`'s is used only for runs
    from before the vocabulary was saved with them)."""
    from mmjax import export  # Lazy: orbax.
    from mmjax.convert import open_clip
    if (paths.resolve(path) / "checkpoints").is_dir():
        config, _, params = export.read_checkpoint(path, step)
    elif (paths.resolve(path) / export.PARAMS_DIR).is_dir():
        config, params = export.load_params(path)
    elif (paths.resolve(path) / open_clip.CONFIG_FILE).is_file():
        config, params, _ = export.load("open_clip", path)
    elif (fmt := export.transformers_format(path)) is not None:
        config, params, _ = export.load(fmt, path)
    else:
        raise FileNotFoundError(f"{path} is neither a workdir (checkpoints/), an `mmjax export "
                                f"--format params` directory nor an open_clip one ({open_clip.CONFIG_FILE})")
    tokenizer = vocab.run_tokenizer(config, data_dir, path, write=False)
    return Model(config, params, tokenizer, batch_size)


class Model:
    """A model with its preprocessing: `encode_image`, `encode_text`, `tokenize`, `preprocess`
    (CLIP-style models), `fill_mask` (MLM models), `generate` (causal LMs)."""

    def __init__(self, config, params, tokenizer, batch_size=64):
        self.config, self.tokenizer, self.batch_size = config, tokenizer, batch_size
        self.task = tasks.get(config, tokenizer)
        self.module = self.task.build_model()
        self.params = jax.device_put(params)
        self.image_options = image_ops.ImageOptions.from_config(config.data)
        self._eval_image = image_ops.EvalImage(self.image_options)
        self._samplers = {}

    @functools.cache
    def _method(self, name):
        return jax.jit(lambda params, *args: self.module.apply({"params": params}, *args, method=name))

    def _batched(self, name, *inputs, index=None):
        """method(inputs) in batches of `batch_size` rows (the last one padded: one compile);
        `index`: of a method returning a tuple, that output only."""
        n, b, out = len(inputs[0]), self.batch_size, []
        for start in range(0, n, b):
            chunk = [x[start:start + b] for x in inputs]
            pad = b - len(chunk[0])
            chunk = [np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) for x in chunk]
            result = self._method(name)(self.params, *chunk)
            out.append(np.asarray(result if index is None else result[index])[:b - pad])
        return np.concatenate(out)

    def preprocess(self, images: Sequence) -> np.ndarray:
        """Images (uint8 [h, w(, c)] arrays, encoded bytes or PIL images) -> float32
        [n, S, S, C], exactly as the evaluators see them."""
        def pixels(image):
            if hasattr(image, "convert"):   # a PIL image
                image = np.asarray(image_ops.to_mode(image, self.image_options.channels))
            return self._eval_image.map({"image": image})["image"]
        stacked = np.stack([pixels(image) for image in images])
        return image_ops.normalise(stacked, self.image_options)

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """int32 [n, context_length], as the model was trained on."""
        return self.tokenizer.encode(list(texts), self.config.model.text.context_length)

    def encode_image(self, images: Sequence) -> np.ndarray:
        """[n, embed_dim] image embeddings (L2-normalised for CLIP models)."""
        return self._batched("encode_image", self.preprocess(images))

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """[n, embed_dim] text embeddings."""
        return self._batched("encode_text", self.tokenize(texts))

    def fill_mask(self, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """For each mask token in `text` (e.g. "to be or [MASK] to be"): the `top_k`
        (token, probability) predictions of an MLM model."""
        tokens = self.tokenize([text])
        slots = np.flatnonzero(tokens[0] == self.tokenizer.mask_id)
        if not len(slots):
            raise ValueError(f"no mask token in {text!r}: write [MASK] where a word should be predicted")
        positions = np.zeros((1, self.config.model.mlm.max_predictions), np.int32)
        positions[0, :len(slots)] = slots[:positions.shape[1]]
        logits = np.asarray(self._method("mlm_logits")(self.params, tokens, positions))[0]
        out = []
        for row in logits[:len(slots)]:
            probs = np.exp(row - row.max())
            probs /= probs.sum()
            best = np.argsort(-probs)[:top_k]
            out.append([(self.tokenizer.decode([i]) or str(i), float(probs[i])) for i in best])
        return out

    def generate(self, prompts: Sequence[str] | None = None, max_new_tokens: int | None = None,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 images: Sequence | None = None) -> list[str]:
        """The continuation of each prompt sampled from a causal LM (task 'lm'), up to its
        end-of-text token or `max_new_tokens` tokens (see mmjax.generate): temperature 0 is
        greedy; top_k 0 and top_p 1 filter nothing; the same seed gives the same text.
        A captioner (task 'clip+caption') captions `images` (as `encode_image` takes them),
        each from the start token and its prompt (default none; one prompt serves all).
        max_new_tokens None: 32, or for captions all the rows the context length leaves."""
        from mmjax import generate as gen
        from mmjax.nn.caption import CaptionDualEncoder
        from mmjax.nn.lm import CausalLM
        from mmjax.tasks.lm import end_id
        kind, need = ((CaptionDualEncoder, "generate(images=...) needs a captioner (task 'clip+caption')")
                      if images is not None else (CausalLM, "generate needs a causal LM (task 'lm')"))
        if not isinstance(self.module, kind):
            raise ValueError(f"{need}; this model is task {self.config.task!r}")
        context = None
        if images is not None:
            context = self._batched("image_features", self.preprocess(images), index=1)
            prompts = [""] if prompts is None else prompts
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if context is not None and len(prompts) == 1:
            prompts = prompts * len(context)
        if context is not None and len(prompts) != len(context):
            raise ValueError(f"{len(prompts)} prompts for {len(context)} images: give one prompt, "
                             f"or one per image")
        if max_new_tokens is None:
            longest = 1 + max(len(ids) for ids in self.tokenizer.ids(prompts))   # the start token too
            max_new_tokens = 32 if context is None else self.config.model.text.context_length - longest + 1
        return gen.generate_text(self.module, self.params, self.tokenizer, prompts,
                                 max_new_tokens=max_new_tokens, temperature=temperature,
                                 top_k=top_k, top_p=top_p, seed=seed, eos_id=end_id(self.tokenizer),
                                 max_length=self.config.model.text.context_length,
                                 cache=self._samplers, context=context)

    def match(self, images: Sequence, texts: Sequence[str]) -> np.ndarray:
        """[n] the ITM probability that caption i describes image i (a fused model, task
        'clip+itm'); images and texts pair up one to one."""
        if len(images) != len(texts):
            raise ValueError(f"match pairs images with texts one to one: got {len(images)} "
                             f"images and {len(texts)} texts; pass as many of each")
        return self._batched("match", self.preprocess(images), self.tokenize(texts))
