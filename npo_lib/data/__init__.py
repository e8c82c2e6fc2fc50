"""Data: readers of TOFU / R-TOFU files, where records come from, the training views, batching."""
