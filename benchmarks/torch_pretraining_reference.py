"""Independent references for the RTD and NSP smoke bars: transformers' PyTorch models trained
on the very rows mmjax trains and evaluates on, to tell a bug in mmjax from a hard task.

  # 1. mmjax's training rows (the first STEPS global batches) and held-out rows, to .npz:
  python -m benchmarks.torch_pretraining_reference dump configs/smoke_rtd.py 2000 /tmp/rtd.npz
  python -m benchmarks.torch_pretraining_reference dump configs/smoke_nsp.py 2000 /tmp/nsp.npz
  # 2. ELECTRA (learned positions: ElectraForPreTraining + ElectraForMaskedLM) or, with
  #    --arch roformer, RoFormer bodies (rotary) under ELECTRA's heads; shared embeddings:
  python -m benchmarks.torch_pretraining_reference rtd /tmp/rtd.npz --steps 1000 [--arch roformer]
  # 3. BertForPreTraining, MLM + NSP:
  python -m benchmarks.torch_pretraining_reference nsp /tmp/nsp.npz --steps 2000

Both train with the smoke configs' recipe (width 128, 2 layers, 4 heads, MLP 512, post-LN,
eps 1e-12; generator width 32, 1 head, MLP 128, 2 layers; batch 32; AdamW b2 0.999 eps 1e-6,
weight decay 0.01 on matrices, linear warm-up then cosine to 0, global-norm clip 1.0; loss =
generator MLM (mean over masked slots) + 50 x BCE (mean over non-padding tokens), resp. MLM +
NSP) and mask with numpy (BERT's 80/10/10 at 15%, n = clip(round(0.15 C), 1, max_predictions)
per row of C candidates: mmjax's rule, a separate implementation). They print the held-out
ROC-AUC (sklearn) on every non-padding token of the test rows after corruption by their own
generator, resp. NSP accuracy on the test pairs mmjax's `nsp` evaluator reads. Figures measured
with it are in configs/smoke_rtd.py and configs/smoke_nsp.py.
"""

import argparse
import math
import os
import time

import numpy as np


def dump(config_path, steps, out):
    """Writes train_<key> [steps, batch, ...] and test_<key> [n, ...] rows of a config's
    pipeline, and the tokenizer's ids, to `out`."""
    import importlib.util

    from mmjax.data import DEFAULT_DATA_DIR, pipeline
    from mmjax.train.setup import setup
    spec = importlib.util.spec_from_file_location("config", config_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config, data_dir = module.get_config(), os.path.expanduser(DEFAULT_DATA_DIR)
    os.makedirs(out + ".workdir", exist_ok=True)
    run = setup(config, data_dir=data_dir, workdir=out + ".workdir")
    batches = pipeline.train_batches(run, data_dir, 0, 1)
    train = [next(batches) for _ in range(steps)]
    rows = {f"train_{k}": np.stack([b[k] for b in train]) for k in train[0] if not k.startswith("_")}
    test = list(pipeline.eval_batches(config.data.train, data_dir=data_dir, split="test",
                                      spec=run.task.batch_spec(), tokenizer=run.tokenizer, batch_size=256))
    rows |= {f"test_{k}": np.concatenate([b[k][valid] for b, valid in test])
             for k in test[0][0] if not k.startswith("_")}
    tok = run.tokenizer
    np.savez(out, **rows, vocab_size=tok.vocab_size, mask_id=tok.mask_id,
             special_ids=np.array(sorted(tok.special_ids)))
    print({k: v.shape for k, v in rows.items()})


class Recipe:
    """The smoke configs' optimiser, schedule and masking, in torch / numpy."""

    def __init__(self, args, data):
        import torch
        self.args, self.torch = args, torch
        torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        self.vocab, self.mask_id = int(data["vocab_size"]), int(data["mask_id"])
        self.special = sorted(set(data["special_ids"].tolist()))
        self.regular = np.setdiff1d(np.arange(self.vocab), self.special)
        self.rng = np.random.default_rng(args.seed)

    def optimizer(self, named):
        """AdamW, decay on matrices except the position table."""
        decayed = [q for n, q in named if q.dim() >= 2 and "position_embeddings" not in n]
        rest = [q for n, q in named if not (q.dim() >= 2 and "position_embeddings" not in n)]
        a = self.args
        return self.torch.optim.AdamW([{"params": decayed, "weight_decay": a.wd},
                                       {"params": rest, "weight_decay": 0.0}],
                                      lr=a.lr, betas=(0.9, 0.999), eps=1e-6)

    def lr(self, step):
        a = self.args
        if step < a.warmup:
            return a.lr * step / a.warmup
        return a.lr * 0.5 * (1 + math.cos(math.pi * (step - a.warmup) / max(a.steps - a.warmup, 1)))

    def mask(self, rng, tokens):
        """(inputs [b, l], positions [b, m], weights [b, m]) of BERT's 80/10/10 masking."""
        m = self.args.max_pred
        b = tokens.shape[0]
        inputs, positions = tokens.copy(), np.zeros((b, m), np.int64)
        weights = np.zeros((b, m), np.float32)
        for i in range(b):
            candidates = np.flatnonzero(~np.isin(tokens[i], self.special))
            if not len(candidates):
                continue
            n = int(np.clip(np.round(self.args.mask_rate * len(candidates)), 1, m))
            chosen = np.sort(rng.choice(candidates, n, replace=False))
            positions[i, :n], weights[i, :n] = chosen, 1
            u = rng.random(n)
            inputs[i, chosen[u < 0.8]] = self.mask_id
            swapped = chosen[(u >= 0.8) & (u < 0.9)]
            inputs[i, swapped] = rng.choice(self.regular, len(swapped))
        return inputs, positions, weights


def rtd(args):
    """ELECTRA on the dumped rows: held-out discriminator ROC-AUC every `eval_every` steps."""
    import torch
    from sklearn.metrics import roc_auc_score
    from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining
    from transformers.models.electra.modeling_electra import ElectraDiscriminatorPredictions
    data = np.load(args.data)
    recipe = Recipe(args, data)
    train, test = data["train_text"], data["test_text"]
    common = dict(vocab_size=recipe.vocab, embedding_size=128, num_hidden_layers=2,
                  max_position_embeddings=train.shape[-1], type_vocab_size=2, layer_norm_eps=1e-12,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    disc_sizes = dict(hidden_size=128, num_attention_heads=4, intermediate_size=512)
    gen_sizes = dict(hidden_size=args.gen_width, num_attention_heads=args.gen_heads,
                     intermediate_size=4 * args.gen_width)
    if args.arch == "electra":
        disc = ElectraForPreTraining(ElectraConfig(**common, **disc_sizes))
        gen = ElectraForMaskedLM(ElectraConfig(**common, **gen_sizes))
        gen.electra.embeddings = disc.electra.embeddings        # shared token/position/type tables
        gen.generator_lm_head.weight = disc.electra.embeddings.word_embeddings.weight
        gen_body = lambda x, attn: gen.electra(x, attention_mask=attn).last_hidden_state
        gen_head = lambda h: gen.generator_lm_head(gen.generator_predictions(h))
        disc_logits = lambda x, attn: disc(x, attention_mask=attn).logits
    else:   # rotary positions: RoFormer bodies under ELECTRA's discriminator head
        from transformers import RoFormerConfig, RoFormerForMaskedLM, RoFormerModel
        body = RoFormerModel(RoFormerConfig(**common, **disc_sizes))
        head = ElectraDiscriminatorPredictions(ElectraConfig(**common, **disc_sizes))
        gen = RoFormerForMaskedLM(RoFormerConfig(**common, **gen_sizes))
        gen.roformer.embeddings = body.embeddings               # shared token/type tables
        gen.cls.predictions.decoder.weight = body.embeddings.word_embeddings.weight
        disc = torch.nn.ModuleDict({"body": body, "head": head})
        gen_body = lambda x, attn: gen.roformer(x, attention_mask=attn).last_hidden_state
        gen_head = gen.cls
        disc_logits = lambda x, attn: head(body(x, attention_mask=attn).last_hidden_state)
    named = list({id(q): (n, q) for m in (disc, gen) for n, q in m.named_parameters()}.values())
    params = [q for _, q in named]
    opt = recipe.optimizer(named)

    def corrupt(rng, rows, grad):
        tokens = torch.from_numpy(rows.astype(np.int64))
        inputs, positions, weights = (torch.from_numpy(x) for x in recipe.mask(rng, rows))
        attn, batch = (tokens != 0).long(), torch.arange(len(rows))[:, None]
        with torch.set_grad_enabled(grad):
            logits = gen_head(gen_body(inputs, attn)[batch, positions])          # [b, m, v]
        labels = tokens[batch, positions]
        logp = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None])[..., 0]
        gen_loss = -(logp * weights).sum() / weights.sum().clamp(min=1)
        gen_acc = ((logits.argmax(-1) == labels).float() * weights).sum() / weights.sum()
        samples = torch.distributions.Categorical(logits=logits.detach().float()).sample()
        fake, (r, c) = tokens.clone(), torch.nonzero(weights > 0, as_tuple=True)
        fake[r, positions[r, c]] = samples[r, c]
        return fake, (fake != tokens).float(), attn, gen_loss, gen_acc

    def evaluate(step):
        disc.eval(), gen.eval()
        rng, scores, labels, accs = np.random.default_rng(1234), [], [], []
        with torch.no_grad():
            for i in range(0, len(test), 256):
                fake, label, attn, _, gen_acc = corrupt(rng, test[i:i + 256], False)
                s = disc_logits(fake, attn)
                scores.append(s[attn > 0].numpy()), labels.append(label[attn > 0].numpy())
                accs.append(gen_acc.item())
        s, y = np.concatenate(scores), np.concatenate(labels)
        print(f"EVAL step {step}: roc_auc {roc_auc_score(y, s):.4f} "
              f"accuracy {np.mean((s > 0) == (y > 0)):.4f} baseline {1 - y.mean():.4f} "
              f"generator_accuracy {np.mean(accs):.4f}", flush=True)
        disc.train(), gen.train()

    start = time.time()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = recipe.lr(step)
        fake, label, attn, gen_loss, gen_acc = corrupt(recipe.rng, train[step % len(train)], True)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            disc_logits(fake, attn), label, reduction="none")
        disc_loss = (bce * attn).sum() / attn.sum()
        opt.zero_grad()
        (gen_loss + args.disc_weight * disc_loss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if (step + 1) % 100 == 0:
            print(f"step {step + 1} generator {gen_loss.item():.3f} discriminator {disc_loss.item():.4f} "
                  f"{time.time() - start:.0f}s", flush=True)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            evaluate(step + 1)


def nsp(args):
    """BertForPreTraining on the dumped pair rows: held-out NSP accuracy every `eval_every`."""
    import torch
    from transformers import BertConfig, BertForPreTraining
    data = np.load(args.data)
    recipe = Recipe(args, data)
    rows, types, labels = data["train_text"], data["train_token_types"], data["train_is_random"]
    model = BertForPreTraining(BertConfig(
        vocab_size=recipe.vocab, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=512, max_position_embeddings=rows.shape[-1], type_vocab_size=2,
        layer_norm_eps=1e-12, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    opt = recipe.optimizer(list(model.named_parameters()))
    as_long = lambda x: torch.from_numpy(np.asarray(x).astype(np.int64))

    def evaluate(step):
        model.eval()
        x, t, y = data["test_text"], data["test_token_types"], data["test_is_random"]
        with torch.no_grad():
            pred = np.concatenate([model(as_long(x[i:i + 256]), attention_mask=as_long(x[i:i + 256] != 0),
                                         token_type_ids=as_long(t[i:i + 256])).seq_relationship_logits
                                   .argmax(-1).numpy() for i in range(0, len(x), 256)])
        print(f"EVAL step {step}: nsp_accuracy {np.mean(pred == y):.4f} "
              f"majority {max(y.mean(), 1 - y.mean()):.4f}", flush=True)
        model.train()

    start = time.time()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = recipe.lr(step)
        k = step % len(rows)
        inputs, positions, weights = recipe.mask(recipe.rng, rows[k])
        seq, pooled = model.bert(as_long(inputs), attention_mask=as_long(rows[k] != 0),
                                 token_type_ids=as_long(types[k]))[:2]
        batch, keep = torch.arange(len(inputs))[:, None], torch.from_numpy(weights) > 0
        positions = torch.from_numpy(positions)
        # BertForPreTraining's heads; the MLM one at the masked slots only (the same loss)
        mlm_logits, nsp_logits = model.cls(seq[batch, positions][keep], pooled)
        mlm = torch.nn.functional.cross_entropy(mlm_logits, as_long(rows[k])[batch, positions][keep])
        nsp_loss = torch.nn.functional.cross_entropy(nsp_logits, as_long(labels[k]))
        opt.zero_grad()
        (mlm + nsp_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % 100 == 0:
            print(f"step {step + 1} mlm {mlm.item():.3f} nsp {nsp_loss.item():.4f} "
                  f"{time.time() - start:.0f}s", flush=True)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            evaluate(step + 1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump")
    d.add_argument("config"), d.add_argument("steps", type=int), d.add_argument("out")
    for name, max_pred in (("rtd", 10), ("nsp", 20)):
        q = sub.add_parser(name)
        q.add_argument("data")
        q.add_argument("--steps", type=int, default=1000)
        q.add_argument("--eval_every", type=int, default=500)
        q.add_argument("--lr", type=float, default=1.5e-3)
        q.add_argument("--warmup", type=int, default=50)
        q.add_argument("--wd", type=float, default=0.01)
        q.add_argument("--max_pred", type=int, default=max_pred)
        q.add_argument("--mask_rate", type=float, default=0.15)
        q.add_argument("--threads", type=int, default=1)
        q.add_argument("--seed", type=int, default=0)
        if name == "rtd":
            q.add_argument("--arch", choices=("electra", "roformer"), default="electra")
            q.add_argument("--gen_width", type=int, default=32)
            q.add_argument("--gen_heads", type=int, default=1)
            q.add_argument("--disc_weight", type=float, default=50.0)
    args = p.parse_args()
    if args.command == "dump":
        dump(args.config, args.steps, args.out)
    else:
        {"rtd": rtd, "nsp": nsp}[args.command](args)


if __name__ == "__main__":
    main()
