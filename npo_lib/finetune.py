"""``python -m npo_lib.finetune [params.yaml ...] [key=value ...]``: the seed scripts' form of ``npo finetune``.

An entry point like the ``npo`` console script (it sits above the CLI); the work is done in
:mod:`npo_lib.commands`.
"""

from __future__ import annotations

import sys

from npo_lib.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
