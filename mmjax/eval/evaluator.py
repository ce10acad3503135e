"""The evaluations of a config's task, as one function of the params."""

import functools

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax.data import pipeline
from mmjax.eval.mlm import masked_accuracy, most_frequent_token
from mmjax.eval.retrieval import recall_at_k
from mmjax.eval.zeroshot import class_embeddings, top1_accuracy
from mmjax.masking import bert_mask
from mmjax.sharding import replicate


def _batched(fn, chunk):
    """Applies fn to a numpy array in chunks and concatenates the numpy results."""
    def run(x):
        return np.concatenate([np.asarray(fn(x[i:i + chunk])) for i in range(0, len(x), chunk)])
    return run


def make_evaluator(config, model, tokenizer, data_dir, mesh):
    """Returns evaluate(params) -> {'eval/...': float} (identical on every process)."""
    out = NamedSharding(mesh, P())
    chunk = config.eval.batch_size
    apply = functools.partial(jax.jit, out_shardings=out)
    metrics_fns = []

    if config.task in ("clip", "clip+mlm"):
        length = config.model.text.context_length
        digits = pipeline.digit_eval_arrays(data_dir, split=config.eval.split)
        enc_img = apply(lambda p, x: model.apply({"params": p}, x, method="encode_image"))
        enc_txt = apply(lambda p, t: model.apply({"params": p}, t, method="encode_text"))

        def contrastive_metrics(params):
            image = _batched(lambda x: enc_img(params, replicate(x, mesh)), chunk)(digits["image"])
            text = _batched(lambda t: enc_txt(params, replicate(t, mesh)), chunk)
            classes = class_embeddings(text, lambda s: tokenizer.encode(s, length),
                                       pipeline.DIGIT_NAMES, pipeline.CAPTION_TEMPLATES)
            captions = text(tokenizer.encode(digits["caption"], length))
            return {"eval/zeroshot_top1": top1_accuracy(image, digits["label"], classes),
                    **{f"eval/{k}": v for k, v in recall_at_k(image, captions, digits["caption"]).items()}}

        metrics_fns.append(contrastive_metrics)

    if config.task in ("mlm", "clip+mlm"):
        c = config.model.mlm
        length = config.model.text.context_length
        if config.task == "mlm":
            texts = pipeline.prose_eval_texts(data_dir, split=config.eval.split)
            train_texts = pipeline.prose_eval_texts(data_dir, split="train")
        else:
            texts = pipeline.digit_eval_arrays(data_dir, split=config.eval.split)["caption"]
            train_texts = pipeline.digit_eval_arrays(data_dir, split="train")["caption"]
        baseline = most_frequent_token(tokenizer.encode(train_texts, length),
                                       tokenizer.special_ids, tokenizer.vocab_size)
        masked = jax.tree.map(np.asarray, jax.jit(functools.partial(
            bert_mask, vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id,
            special_ids=tuple(tokenizer.special_ids), max_predictions=c.max_predictions,
            mask_rate=c.mask_rate))(jax.random.PRNGKey(config.eval.seed),
                                    tokenizer.encode(texts, length)))
        method = None if config.task == "mlm" else "mlm_logits"
        predict = apply(lambda p, t, pos: model.apply({"params": p}, t, pos, method=method).argmax(-1))

        def mlm_metrics(params):
            preds = np.concatenate([
                np.asarray(predict(params, replicate(masked["inputs"][i:i + chunk], mesh),
                                   replicate(masked["positions"][i:i + chunk], mesh)))
                for i in range(0, len(texts), chunk)])
            acc, base = masked_accuracy(preds, masked["labels"], masked["weights"], baseline)
            return {"eval/mlm_accuracy": acc, "eval/mlm_baseline_accuracy": base}

        metrics_fns.append(mlm_metrics)

    def evaluate(params):
        results = {}
        for fn in metrics_fns:
            results.update(fn(params))
        return results

    return evaluate
