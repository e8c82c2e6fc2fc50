"""The commands: from a checked config to files another tool reads.

``npo prepare``, ``npo finetune``, ``npo forget``, ``npo influence`` and ``npo eval``, with the
checks every command runs before a model loads and the rules of run folders.
"""
