"""Sampling (mmjax.generate): the cached sampler against recomputing the whole prefix, the
filters against numpy, greedy decoding against transformers' GPT-2 `generate`, the stop at
end-of-text, the sharded sampler against one device's, and `mmjax sample`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import generate as gen
from mmjax.train.setup import setup
from test_lm import TOKENIZER, _init, _to_gpt2, lm_config

KEY = jax.random.PRNGKey(4)


def right_padded(lengths, width, seed=0):
    """Prompts [b, width]: a start token then random ids, padded with 0; and lengths [b]."""
    rng = np.random.default_rng(seed)
    prompts = np.zeros((len(lengths), width), np.int32)
    for i, n in enumerate(lengths):
        prompts[i, :n] = [2, *rng.integers(5, 64, n - 1)]
    return prompts, np.asarray(lengths, np.int32)


def recomputed(model, params, prompts, lengths, new, eos_id=None, **filters):
    """The reference: every step runs the whole model over the prefix (right-padded to
    prompt + new rows; causal, so the padding changes nothing before it) and draws the next
    token of each row with `next_tokens` and step t's key; a row that ended is padded."""
    b, width = prompts.shape

    @jax.jit
    def step(seq, t):
        logits = model.apply({"params": params}, seq, method="lm_logits")
        rows = logits[jnp.arange(b), lengths + t - 1]
        return gen.next_tokens(rows, jax.random.fold_in(KEY, t), **filters)

    seq = np.zeros((b, width + new), np.int32)
    seq[:, :width] = prompts
    out, done = np.zeros((b, new), np.int32), np.zeros(b, bool)
    for t in range(new):
        token = np.where(done, 0, np.asarray(step(seq, t)))
        out[:, t] = token
        seq[np.arange(b), lengths + t] = token
        if eos_id is not None:
            done |= token == eos_id
    return out


@pytest.mark.parametrize("position,scan,tie,pre_norm", [
    ("learned", False, True, True), ("rotary", True, False, False)])
def test_cached_sampling_equals_recomputing_the_prefix(position, scan, tie, pre_norm):
    config = lm_config(context=20, tie=tie, scan=scan, position=position, pre_norm=pre_norm)
    _, model, params = _init(config, seed=1, scale=0.3)
    prompts, lengths = right_padded([3, 8, 5], 8)
    filters = dict(temperature=1.0, top_k=20, top_p=0.9)
    got = np.asarray(gen.sampler(model, 12, None)(params, prompts, lengths, KEY, *filters.values()))
    want = recomputed(model, params, prompts, lengths, 12, **filters)
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(got)) > 6   # draws, not one token repeated


def numpy_filter(logits, temperature, top_k, top_p):
    """Row by row: divide by the temperature; drop what is below the k-th largest; sort what
    is left by probability and keep tokens while the mass before them is under top_p."""
    out = np.asarray(logits, np.float64) / (temperature or 1.0)
    for row in out:
        if top_k:
            row[row < np.sort(row)[::-1][top_k - 1]] = -np.inf
        p = np.exp(row - row.max())
        p /= p.sum()
        order = np.argsort(-p)
        before = 0.0
        for i in order:
            if before >= top_p:
                row[i] = -np.inf
            before += p[i]
    return out


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.6),
                                                     (0.5, 12, 0.8), (1.0, 1, 0.5), (2.0, 0, 0.05)])
def test_top_k_and_top_p_filters_equal_numpy(temperature, top_k, top_p):
    logits = np.random.default_rng(top_k).normal(0, 2, (4, 50)).astype(np.float32)
    got = np.asarray(gen.filter_logits(jnp.asarray(logits), temperature, top_k, top_p))
    want = numpy_filter(logits, temperature, top_k, top_p)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    np.testing.assert_allclose(got[~np.isinf(got)], want[~np.isinf(want)], rtol=1e-6)
    drawn = np.stack([np.asarray(gen.next_tokens(jnp.asarray(logits), jax.random.PRNGKey(s), temperature,
                                                 top_k, top_p)) for s in range(20)])
    assert np.isfinite(np.take_along_axis(want, drawn.T, axis=1)).all()   # only kept tokens drawn
    greedy = gen.next_tokens(jnp.asarray(logits), KEY, 0.0, top_k, top_p)
    np.testing.assert_array_equal(greedy, logits.argmax(-1))


def test_greedy_continuation_equals_transformers_gpt2_generate(tmp_path):
    import torch
    config = lm_config(context=40, tie=False, scan=True)
    _, model, params = _init(config, seed=1, scale=0.3)
    reference = _to_gpt2(config, params, tmp_path / "gpt2")
    prompts, lengths = right_padded([8, 5], 8, seed=3)
    got = np.asarray(gen.sampler(model, 32, None)(params, prompts, lengths, KEY, 0.0, 0, 1.0))
    for row, n in enumerate(lengths):   # transformers: each prompt alone, no padding
        ids = torch.from_numpy(prompts[row:row + 1, :n].astype(np.int64))
        theirs = reference.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=32, min_new_tokens=32, pad_token_id=0)
        assert got[row].tolist() == theirs[0, n:].tolist()
    assert len(np.unique(got)) > 4


def test_each_row_stops_at_its_first_end_token():
    config = lm_config(context=24, tie=True, position="sinusoidal")
    _, model, params = _init(config, seed=2, scale=0.3)
    prompts, lengths = right_padded([4, 6, 2], 6, seed=5)
    free = np.asarray(gen.sampler(model, 16, None)(params, prompts, lengths, KEY, 0.9, 0, 1.0))
    eos = int(free[0, 5])      # row 0 ends there; the others where (and if) they draw it
    stopped = np.asarray(gen.sampler(model, 16, eos, pad_id=99)(params, prompts, lengths, KEY, 0.9, 0, 1.0))
    for row, got in zip(free, stopped):
        hits = np.flatnonzero(row == eos)
        end = hits[0] + 1 if len(hits) else 16
        np.testing.assert_array_equal(got[:end], row[:end])
        assert (got[end:] == 99).all()
    assert (stopped[0, 6:] == 99).all() and (stopped[0, :6] != 99).all()


def test_sampling_on_a_3d_mesh_gives_one_device_tokens():
    """8 simulated devices, data 2 x fsdp 2 x tensor 2: the same tokens as one device."""
    prompts, lengths = right_padded([3, 8, 5, 2, 7, 4, 6, 1 + 1], 8, seed=7)

    def tokens(shape):
        config = lm_config(context=20, tie=False, scan=True, position="rotary")
        config.mesh.update(data=shape[0], fsdp=shape[1], tensor=shape[2])
        run = setup(config, tokenizer=TOKENIZER, devices=jax.devices()[:int(np.prod(shape))])
        params = run.init_state().params
        assert len(params["lm_head"].sharding.device_set) == int(np.prod(shape))
        batch = jax.sharding.NamedSharding(run.mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
        fn = gen.sampler(run.model, 10, TOKENIZER.eos_id)
        with gen.on_mesh(run.mesh, run.rules):
            sharded = [jax.device_put(x, batch) for x in (prompts, lengths)]
            out = fn(params, *sharded, KEY, 1.5, 0, 1.0)
        return np.asarray(jax.device_get(out))

    one, eight = tokens((1, 1, 1)), tokens((2, 2, 2))
    np.testing.assert_array_equal(eight, one)
    assert len(np.unique(one)) > 6


@pytest.fixture(scope="module")
def lm_workdir(tmp_path_factory):
    """A tiny smoke_lm-shaped run (WordPiece on the prose) written as a step-0 checkpoint with
    random weights of std 0.3 (clear argmaxes): (workdir, data_dir). No training."""
    from conftest import made_once
    from mmjax import config as config_lib
    from mmjax import export
    from mmjax.convert import layout
    from mmjax.data import builders
    data_dir = str(made_once(tmp_path_factory, "lm_prose", lambda folder: builders.prepare("prose", str(folder))))
    config = config_lib.load("configs/smoke_lm.py")
    config.model.text.update(context_length=16, width=16, depth=1, num_heads=2, mlp_dim=32)
    shapes = layout.flatten(setup(config, data_dir=data_dir, devices=jax.devices()[:1]).abstract_state.params)
    rng = np.random.default_rng(0)
    params = {name: (1.0 if name.endswith("/scale") else 0.0) + rng.normal(0, 0.3, x.shape).astype(np.float32)
              for name, x in shapes.items()}
    workdir = str(tmp_path_factory.mktemp("lm_run") / "run")
    export.write_workdir(config, layout.unflatten(params), workdir, data_dir)
    return workdir, data_dir


def test_sample_command_prints_the_greedy_continuation(lm_workdir, capsys):
    """`mmjax sample --temperature 0`: the text of the full model's argmax, recomputed over the
    whole prefix each step, up to the end token."""
    from mmjax import cli, export
    from mmjax.data import vocab
    workdir, data_dir = lm_workdir
    prompt = "to be or not to be"
    assert cli.main(["sample", "--workdir", workdir, "--data_dir", data_dir, "--prompt", prompt,
                     "--temperature", "0", "--max_new_tokens", "8"]) == 0
    printed = capsys.readouterr().out.strip()
    config, _, params = export.read_checkpoint(workdir)
    tok = vocab.run_tokenizer(config, data_dir, workdir, write=False)
    from mmjax import tasks
    model = tasks.get(config, tok).build_model()
    seq = [tok.bos_id, *tok.ids([prompt])[0]]
    apply = jax.jit(lambda t: model.apply({"params": params}, t, method="lm_logits"))
    new = []
    while len(new) < 8 and tok.eos_id not in new:
        row = np.array([seq + new + [0] * (16 - len(seq) - len(new))], np.int32)
        new.append(int(np.argmax(np.asarray(apply(row))[0, len(seq) + len(new) - 1])))
    want = tok.decode([i for i in new if i != tok.eos_id])
    assert printed == want and want
    assert cli.main(["sample", "--workdir", workdir, "--data_dir", data_dir, "--prompt", prompt * 3,
                     "--max_new_tokens", "8"]) == 2
    assert "context_length=16" in capsys.readouterr().err


def _events(folder):
    """The Event protos of the TensorBoard files under `folder` (TFRecord framing)."""
    import struct
    from tensorboardX.proto import event_pb2
    out = []
    for path in sorted(folder.glob("events.out.tfevents*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            out.append(event_pb2.Event.FromString(data[i + 12:i + 12 + n]))
            i += 12 + n + 4
    return out


def test_samples_evaluator_reports_the_seeded_continuations_as_text(lm_workdir, tmp_path):
    """On a 2-device mesh: the continuations `mmjax.load(W).generate` gives (one device) for
    the same seed; the metric writer puts them in metrics.jsonl and TensorBoard text."""
    import json
    import mmjax
    from mmjax import export
    from mmjax.eval.samples import Samples
    from mmjax.metrics import MetricWriter
    workdir, data_dir = lm_workdir
    config, _, params = export.read_checkpoint(workdir)
    run = setup(config, data_dir=data_dir, workdir=workdir, devices=jax.devices()[:2])
    params = jax.device_put(params, run.state_shardings.params)
    prompts = ("to be or not", "the function")
    options = dict(max_new_tokens=6, temperature=0.9, top_k=50, top_p=0.9, seed=3)
    spec = dict(type="samples", split="test", every=1, batch_size=8, prompts=prompts, **options)
    got = Samples(run, spec, data_dir).run(params)
    want = mmjax.load(workdir, data_dir=data_dir).generate(list(prompts), **options)
    assert got == {f"sample_{i}": f"{p} → {w}" for i, (p, w) in enumerate(zip(prompts, want))}
    assert any(want)
    writer = MetricWriter(str(tmp_path), 10)
    writer.write(5, {f"eval/samples/{k}": v for k, v in got.items()} | {"eval/lm/perplexity": 2.5})
    writer.close()
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert record["eval/samples/sample_1"] == got["sample_1"] and record["eval/lm/perplexity"] == 2.5
    texts = {v.tag: v.tensor.string_val[0].decode() for e in _events(tmp_path / "tensorboard")
             for v in e.summary.value if v.tensor.string_val}
    assert any(tag.startswith("eval/samples/sample_0") and text == got["sample_0"]
               for tag, text in texts.items()), texts
