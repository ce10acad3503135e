"""CLIP + MLM: the contrastive task, plus masked-caption prediction from the same text tower."""

import numpy as np

from mmjax import flops
from mmjax.tasks import TASKS
from mmjax.tasks.clip import Clip
from mmjax.tasks.mlm import mlm_head, mlm_term


@TASKS.register("clip+mlm")
class ClipMlm(Clip):
    """loss = contrastive + `model.mlm.weight` × MLM on the captions (a bidirectional text tower)."""

    def build_model(self):
        return super().build_model(mlm_head=mlm_head(self.config.model))

    def init_args(self, batch_size=1):
        batch = self.example_batch(batch_size)
        positions = np.zeros((batch_size, self.config.model.mlm.max_predictions), np.int32)
        return "init_all", (batch["image"], batch["text"], positions)

    def loss_terms(self, model, mesh):
        return super().loss_terms(model, mesh) | {
            "mlm": mlm_term(self.config, self.tokenizer, model, self.config.model.mlm.weight)}

    def default_evals(self):
        return super().default_evals() | {
            "mlm": dict(type="mlm", dataset=self.train_datasets()[0])}

    def train_flops(self):
        """CLIP's, plus the text tower run again on the masked captions, plus the MLM head."""
        m = self.config.model
        return super().train_flops() + flops.mlm_train_flops(
            self.config.train.batch_size, m.text, m.mlm.max_predictions, flops.prunes(m))
