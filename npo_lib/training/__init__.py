"""Training, one home for unlearning and fine-tuning: the trainer that composes the objective's
terms, its HF ``TrainingArguments``, the DeepSpeed process group and how weights are saved."""
