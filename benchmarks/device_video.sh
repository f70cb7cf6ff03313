#!/usr/bin/env bash
# The video speed figures on a lent GPU machine, in one call (see the README, "Video runtime
# speed"). Run from the repository root with the missing wheels in .whl/ (av, pydicom,
# highdicom, segment-anything, and pydantic, pydantic-settings with their needs for the CLI;
# the machine's image has torch, torchvision, opencv, numpy, pillow, safetensors):
#
#   OUT=/some/folder bash benchmarks/device_video.sh
#
# Steps, each under its own time limit so that one that overruns still leaves the others:
#   1. benchmarks.video in float16, eager: 640x480 and 1280x720, plus the 10 s clip, a
#      correction on it and the clip restored again with given masks (a restore job); the
#      pipeline cases also with the tooth model on every second frame (SEGMENT_EVERY,
#      default 1,2)
#   2. the same with the restoration network and the tooth model's image encoder torch.compiled
#      (compilation in the warm-up)
#   3. eval video on the first EVAL_LIMIT held-out test phantoms in float16 on the GPU (do the
#      metrics hold?)
# Writes fp16.json, compile.json, eval/eval_video.{json,txt} and log.txt in $OUT; each
# pipeline figure comes with how long each stage of the stream worked (stage_busy_seconds).
# Sizes and limits can be made small to try the script on a CPU: DEVICE=cpu PRECISION=float32
# SIZES=160x128 FRAMES=6 EVAL_LIMIT=1.
set -u
OUT=${OUT:?set OUT to a folder}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-float16}
SIZES=${SIZES:-640x480,1280x720}
FRAMES=${FRAMES:-120}
EVAL_LIMIT=${EVAL_LIMIT:-8}  # 24 (the whole test split) did not finish in 85 s on 2026-12-04
PY=${PY:-python3}
mkdir -p "$OUT/eval"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >> "$LOG" 2>&1 || { echo "wheel install failed"; tail -5 "$LOG"; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv 2>&1; nproc; } >> "$LOG"

step() {  # step NAME LIMIT COMMAND...: run with a time limit, stderr to the log, say how it ended
  local name=$1 limit=$2
  shift 2
  local started=$SECONDS
  echo "== $name" >> "$LOG"
  timeout "$limit" "$@" 2>> "$LOG"
  echo "$name: rc $? in $((SECONDS - started)) s" | tee -a "$LOG" >&2
}

common=(--device "$DEVICE" --precision "$PRECISION" --sizes "$SIZES" --frames "$FRAMES" --repeats 5 \
  --segment-every "${SEGMENT_EVERY:-1,2}")
step fp16 190 $PY -m benchmarks.video "${common[@]}" --prompt-runs 200 --ten-second > "$OUT/fp16.json"
step compile 210 $PY -m benchmarks.video "${common[@]}" --prompt-runs 50 --compile > "$OUT/compile.json"
step phantoms 30 $PY -m dicom_service.cli phantoms video --out /tmp/ph --train 0 --val 0 --test 24 --frames 12 \
  --seed 0 > /dev/null
step eval 120 $PY -m dicom_service.cli eval video --data /tmp/ph --split test --limit "$EVAL_LIMIT" \
  --device "$DEVICE" --precision "$PRECISION" --out "$OUT/eval" > /dev/null
rm -f "$OUT/eval/contact_sheet.png"
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
for name in ("fp16", "compile"):
    path = Path(sys.argv[1]) / f"{name}.json"
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        print(name, "no result")
        continue
    for size, case in result["cases"].items():
        print(name, size, "restoration", case["restoration"]["fps"], "pipeline", case["pipeline"]["fps"],
              "prompt ms", case["prompt_to_mask"]["median_ms"], "busy s", case["pipeline"].get("stage_busy_seconds"))
        for key in (k for k in case if k.startswith("pipeline_segment_every")):
            print(name, size, key, case[key]["fps"], "busy s", case[key].get("stage_busy_seconds"))
    for key in (k for k in result if k.startswith("ten_second_clip")):
        print(name, key, result[key]["seconds"], "s")
EOF
