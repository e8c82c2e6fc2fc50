#!/usr/bin/env bash
# One short GPU check (under 8 minutes, no network): NPO+GD forget steps (LoRA and full), the
# token-influence step and a ZeRO-3 run on random Llamas of 8B shape (or the largest that fits);
# tokens/s, MFU against the GPU's peak bf16 FLOPS, peak memory. See bench/gpu_check.py.
#
#   bash bench/gpu_check.sh [gpu_check.py options]     # from the repository root
#   PYTHON=/path/to/python bash bench/gpu_check.sh     # a given interpreter
#
# The interpreter: $PYTHON, else .venv/bin/python, else python3 — the first whose torch sees a
# GPU (on a machine with nvidia-smi), else the first that imports torch. npo_lib is used from
# this working tree (PYTHONPATH), so it need not be installed. Without a GPU it runs the CPU
# smoke mode (--device cpu --shape tiny). The summary JSON goes to $OUT/gpu_check.json when $OUT
# is set (else a temp file; --json PATH chooses).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1  # nothing is downloaded

echo "== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), repo $ROOT ($(git rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
gpu=0
if command -v nvidia-smi >/dev/null 2>&1; then
  echo "== nvidia-smi"
  nvidia-smi --query-gpu=index,name,memory.total,memory.used,driver_version,power.limit,clocks.max.sm \
    --format=csv 2>/dev/null || nvidia-smi -L || true
  nvidia-smi -L >/dev/null 2>&1 && gpu=1
else
  echo "== no nvidia-smi: no NVIDIA GPU visible"
fi

candidates=()
[ -n "${PYTHON:-}" ] && candidates+=("$PYTHON")
[ -x .venv/bin/python ] && candidates+=(.venv/bin/python)
candidates+=(python3 python)
py=""
for c in "${candidates[@]}"; do
  command -v "$c" >/dev/null 2>&1 || continue
  if [ "$gpu" = 1 ]; then
    if "$c" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then py="$c"; break; fi
  elif "$c" -c 'import torch' >/dev/null 2>&1; then py="$c"; break; fi
done
if [ -z "$py" ]; then
  for c in "${candidates[@]}"; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import torch' >/dev/null 2>&1; then py="$c"; break; fi
  done
  [ -n "$py" ] && [ "$gpu" = 1 ] && echo "!! no interpreter's torch sees the GPU (a CPU-only torch?): using $py"
fi
if [ -z "$py" ]; then
  echo "!! no Python with torch among: ${candidates[*]}"
  echo "   install (needs network): pip install 'torch>=2.4' 'transformers>=4.56' 'peft>=0.13' 'accelerate>=1.0' \\"
  echo "     safetensors tokenizers omegaconf pyyaml tqdm deepspeed     # or: pip install -e '.[deepspeed]'"
  exit 2
fi

echo "== python: $(command -v "$py") ($("$py" -c 'import sys; print(sys.version.split()[0])'))"
missing="$("$py" - <<'EOF'
import importlib.util
need = ["torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "omegaconf", "yaml", "tqdm"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
EOF
)"
if [ -n "$missing" ]; then
  echo "!! missing packages for $py: $missing"
  echo "   install (needs network): $py -m pip install ${missing/yaml/pyyaml}   # or: pip install -e '.[deepspeed]'"
  exit 2
fi
"$py" - <<'EOF'
import importlib
import torch
print(f"== torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"GPU visible: {torch.cuda.is_available()}" + (f" ({torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()})" if torch.cuda.is_available() else ""))
vers = []
for m in ("transformers", "peft", "accelerate", "deepspeed", "flash_attn"):
    try:
        vers.append(f"{m} {importlib.import_module(m).__version__}")
    except ModuleNotFoundError:
        vers.append(f"{m} -")
    except Exception as e:  # e.g. deepspeed without a usable toolchain
        vers.append(f"{m} (import error: {type(e).__name__})")
print("== " + ", ".join(vers) + "   (deepspeed '-': the ZeRO-3 section is skipped)")
EOF

args=(${1+"$@"})
if [ "$gpu" = 0 ] || ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  case " ${args[*]-} " in
    *" --device "*|*" --shape "*) ;;
    *) echo "== no usable GPU: CPU smoke mode (--device cpu --shape tiny)"; args=(--device cpu --shape tiny ${args[@]+"${args[@]}"}) ;;
  esac
fi
echo "== vLLM generation (eval.generator=vllm): its test; skipped with the reason where vLLM or a GPU is missing"
"$py" -m pytest -q -p no:cacheprovider -rs tests/test_evaluate.py -k vllm_generation_keeps \
  || echo "!! the vLLM generation test failed or pytest is missing (see above)"
echo "== $py bench/gpu_check.py ${args[*]-}"
exec "$py" bench/gpu_check.py ${args[@]+"${args[@]}"}
