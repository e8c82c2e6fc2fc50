"""``python -m npo_lib.finetune [params.yaml ...] [key=value ...]``: ``npo finetune`` as a
module (what torchrun and the DeepSpeed launcher start on every rank).

An entry point like the ``npo`` console script (it sits above the CLI); the work is done in
:mod:`npo_lib.commands`.
"""

from __future__ import annotations

import sys

from npo_lib.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
