#!/usr/bin/env bash
# Issue 19's check: N consecutive 2-process runs of each strategy (25 DDP and 25 FSDP by default)
# on prepared People's Daily, with the CLI's default threads, none saving or evaluating before
# the end. Prints one line per run and the count that ended with their model and ledger.
#
#   bash bench/distributed_runs.sh [RUNS_PER_STRATEGY] [DATA_DIR] [WORK_DIR]
#
# Load on the machine makes the ranks' timing differ more, so a mismatch between them is more
# likely to show, not less: a busy machine is a fair place to run it.
set -uo pipefail
N="${1:-25}"
DATA="${2:-data/peoples-daily}"
WORK="${3:-runs/distributed-check}"
C="${CANDORLM:-.venv/bin/candorlm}"
[ -f "$DATA/meta.json" ] || $C prepare builtin:peoples-daily --out "$DATA" || exit 2
mkdir -p "$WORK"
ok=0; total=0
for i in $(seq 1 "$N"); do
  for strategy in ddp fsdp; do
    out="$WORK/$strategy"
    total=$((total + 1))
    start=$(date +%s)
    CANDORLM_PROGRESS=0 $C train --data "$DATA" --preset tiny --out "$out" --overwrite --max-steps 20 \
        --save-every 1000 --eval-every 1000 --seed 2 --nproc 2 --strategy "$strategy" > "$WORK/last-$strategy.log" 2>&1
    rc=$?
    if [ $rc -eq 0 ] && [ -f "$out/model.safetensors" ] && [ -f "$out/ledger.json" ]; then
      ok=$((ok + 1)); verdict=ok
    else
      verdict="FAILED (rc $rc)"; cp "$WORK/last-$strategy.log" "$WORK/failed-$total-$strategy.log"
    fi
    echo "run $total ($strategy): $verdict in $(( $(date +%s) - start )) s; $ok of $total ended with model and ledger"
  done
done
echo "distributed runs: $ok of $total ended with their model and ledger"
[ "$ok" -eq "$total" ]
