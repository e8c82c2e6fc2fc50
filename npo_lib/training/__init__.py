"""Training, one home for unlearning and fine-tuning: the trainer that composes the objective's
terms, the providers of the inputs those terms need (:mod:`.inputs`), the objectives described
from the registries (:mod:`.describe`, ``npo losses``), its HF ``TrainingArguments``, the
DeepSpeed process group and how weights are saved."""
