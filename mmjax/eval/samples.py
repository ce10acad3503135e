"""Seeded continuations of fixed prompts, reported as text with the metrics: what a causal LM learned."""

from mmjax import generate as gen
from mmjax.errors import ConfigError
from mmjax.eval import EVALUATORS
from mmjax.eval.base import Evaluator
from mmjax.nn.lm import CausalLM
from mmjax.tasks.lm import end_id

PROMPT_WORDS = 4      # default prompts: the first words of the split's first texts
DEFAULT_PROMPTS = 3


@EVALUATORS.register("samples")
class Samples(Evaluator):
    """`sample_<i>`: 'PROMPT → CONTINUATION' for each prompt, the continuation sampled from
    the model (mmjax.generate, with the run's mesh) under the entry's seed, so runs and steps
    compare; metrics.jsonl holds the strings and TensorBoard shows them as text.

    Options: `prompts` (strings; default the first PROMPT_WORDS words of the first
    DEFAULT_PROMPTS texts of the entry's split), `max_new_tokens` (24), `temperature` (0.8;
    0: greedy), `top_k` (0: off), `top_p` (0.95; 1: off), `seed` (config.eval.seed).
    `dataset` defaults to the first training dataset (it only supplies default prompts).
    """

    needs = ("lm_logits",)

    def __init__(self, run_setup, spec, data_dir):
        spec = {"dataset": run_setup.task.train_datasets()[0]} | dict(spec)
        super().__init__(run_setup, spec, data_dir)
        if not isinstance(run_setup.model, CausalLM):
            raise ConfigError(f"evaluator type 'samples' needs a causal LM (task 'lm'); task "
                              f"{run_setup.config.task!r} builds a {type(run_setup.model).__name__}")
        s = self.spec
        self.options = dict(max_new_tokens=int(s.get("max_new_tokens", 24)),
                            temperature=float(s.get("temperature", 0.8)),
                            top_k=int(s.get("top_k", 0)), top_p=float(s.get("top_p", 0.95)),
                            seed=int(s.get("seed", 0)))
        o = self.options
        if o["max_new_tokens"] < 1 or o["temperature"] < 0 or o["top_k"] < 0 or not 0 < o["top_p"] <= 1:
            raise ConfigError(f"evaluator entry of type 'samples' has {o}; valid: max_new_tokens >= 1, "
                              f"temperature >= 0 (0: greedy), top_k >= 0 (0: off), 0 < top_p <= 1")
        self.prompts = list(s["prompts"]) if s.get("prompts") else None
        self._samplers = {}

    def _default_prompts(self):
        texts = self.dataset.texts(self.data_dir, self.spec["split"])
        return [" ".join(t.split()[:PROMPT_WORDS]) for _, t in zip(range(DEFAULT_PROMPTS), texts)]

    def run(self, params):
        if self.prompts is None:
            self.prompts = self._default_prompts()
        run = self.setup
        texts = gen.generate_text(run.model, params, run.tokenizer, self.prompts,
                                  eos_id=end_id(run.tokenizer),
                                  max_length=run.config.model.text.context_length, mesh=run.mesh,
                                  rules=run.rules, cache=self._samplers, **self.options)
        return {f"sample_{i}": f"{prompt} → {text}"
                for i, (prompt, text) in enumerate(zip(self.prompts, texts))}
