#!/usr/bin/env bash
# The results tables of docs/results.md: every dataset with the default job, 3 student
# seeds each (`--seeds 3`: extra groups of one teacher pass), the default committee
# trained first into runs/results/<dataset>/teacher. Prints each table
# (jobs.report_table), to be pasted into docs/results.md.
#   bash jobs/results.sh [movielens synthetic dense_tabular id_heavy multi_hot]
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
out=runs/results
for name in ${@:-movielens synthetic dense_tabular id_heavy multi_hot}; do
  mkdir -p "$out/$name"
  case $name in
    movielens) data=(--data movielens) ;;
    # 2 passes: in an 8-pass run the baseline peaked on validation in pass 2, then fell
    synthetic) data=(--data synthetic --rows 200000 --passes 2) ;;
    *) $PY -m data.shapes "$name" "$out/$name/data" --rows 60000 >/dev/null
       data=(--data "$out/$name/data/dataset.toml") ;;
  esac
  $PY -m jobs.distill "${data[@]}" --seeds 3 --no-progress \
    --teacher-checkpoint "$out/$name/teacher" --report "$out/$name/report.json" \
    > "$out/$name.log" 2>&1 || { tail -20 "$out/$name.log"; exit 1; }
done
$PY -m jobs.report_table "$out"/*/report.json
