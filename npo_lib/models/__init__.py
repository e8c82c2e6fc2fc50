"""Models: families (hub ids, chat and think tags), loading, LoRA adapters, exact attention."""
