"""The objectives beyond CLIP and MLM over real processes (jax.distributed, gloo): each logs
the same losses (and its evaluators the same figures and sampled text) on 2 hosts as on 1, and
a 2-host run killed with -9 resumes bitwise."""

import json

import pytest

from test_multihost_data import _finish, _kill_after_checkpoint_2, _losses, _start, env  # noqa: F401

RUN = ["--config.train.steps=6", "--config.train.checkpoint_every=2", "--config.train.log_every=1",
       "--config.train.eval_every=1000", "--config.train.batch_size=24"]
TEXT = ["--config.model.text.depth=1", "--config.model.text.width=32",
        "--config.model.text.mlp_dim=64", "--config.model.text.num_heads=2"]
IMAGE = ["--config.model.embed_dim=16", "--config.model.image.depth=1",
         "--config.model.image.width=32", "--config.model.image.mlp_dim=64",
         "--config.model.image.num_heads=2"]
# Each smoke config, shrunk. CI runs the causal LM (packed documents: the packing windows and
# their resume position); the others are run by hand (pytest -m acceptance), a few minutes each.
OBJECTIVES = [
    pytest.param(["--config", "configs/smoke_lm.py", *RUN, *TEXT, "--config.train.eval_every=6"],
                 id="lm", marks=pytest.mark.slow),   # + its evaluators at step 6: lm and samples
    pytest.param(["--config", "configs/smoke_caption.py", *RUN, *TEXT, *IMAGE], id="clip+caption",
                 marks=pytest.mark.acceptance),
    pytest.param(["--config", "configs/smoke_itm.py", *RUN, *TEXT, *IMAGE], id="clip+itm+mlm",
                 marks=pytest.mark.acceptance),
    pytest.param(["--config", "configs/smoke_rtd.py", *RUN, *TEXT], id="rtd",
                 marks=pytest.mark.acceptance),
    pytest.param(["--config", "configs/smoke_nsp.py", *RUN, *TEXT], id="mlm+nsp",
                 marks=pytest.mark.acceptance),
]


@pytest.mark.parametrize("args", OBJECTIVES)
def test_two_hosts_log_one_hosts_losses_and_resume_bitwise_after_kill_9(tmp_path, env, args):
    one = _run(tmp_path / "one", env, 1, args)
    two = _run(tmp_path / "two", env, 2, args)
    evals = _evals(tmp_path / "one")
    assert evals == _evals(tmp_path / "two")
    if "--config.train.eval_every=6" in args:
        assert any(k.startswith("eval/samples/sample_") for k in evals), evals
    assert sorted(one) == list(range(1, 7)) and one.keys() == two.keys()
    for step in one:   # the same global batch; only the rounding of cross-host sums differs
        for key, value in one[step].items():
            assert two[step][key] == pytest.approx(value, rel=1e-5), (step, key)
    workdir = tmp_path / "killed"
    procs, logs = _start(workdir, env, 2, args)
    _kill_after_checkpoint_2(workdir, procs, logs)
    output = _finish(*_start(workdir, env, 2, args))
    assert "resuming at step" in output, output[-3000:]
    resumed = _losses(workdir)
    for step in range(3, 7):
        assert resumed[step] == two[step], step   # bitwise: the uninterrupted 2-host run


def _run(workdir, env, processes, args):
    _finish(*_start(workdir, env, processes, args))
    return _losses(workdir)


def _evals(workdir):
    """{eval/* key: value} logged at the last step: the same text and (to rounding) numbers."""
    path = workdir / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    evals = {k: v for r in records for k, v in r.items() if k.startswith("eval/")}
    return {k: v if isinstance(v, str) else pytest.approx(v, rel=1e-5)
            for k, v in evals.items() if "per_second" not in k and "seconds" not in k}
