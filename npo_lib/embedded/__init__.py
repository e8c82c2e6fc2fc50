"""The embedded default: a generated fictitious-author benchmark, its tokenizer, and where the
embedded models and the models a config names live."""
