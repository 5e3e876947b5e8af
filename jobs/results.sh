#!/usr/bin/env bash
# The results tables of docs/results.md: every dataset with the default job, 3 student
# seeds each (`--seeds 3`: extra groups of one teacher pass), the default committee
# trained first into runs/results/<dataset>/teacher; then the weak-teacher job, the
# id_drift shape with --patience 2, and the feature-KD choice (tune_feat.toml, its
# validation tables). Prints each table (jobs.report_table), to be pasted into
# docs/results.md.
#   bash jobs/results.sh [movielens synthetic dense_tabular id_heavy multi_hot id_drift]
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
out=runs/results
mkdir -p "$out/weak" "$out/tune_feat"
distill() {  # name, then the job's own arguments
  local name=$1; shift
  $PY -m jobs.distill "$@" --seeds 3 --no-progress > "$out/$name.log" 2>&1 \
    || { tail -20 "$out/$name.log"; exit 1; }
}
for name in ${@:-movielens synthetic dense_tabular id_heavy multi_hot id_drift}; do
  mkdir -p "$out/$name"
  case $name in
    movielens) data=(--data movielens) ;;
    # 2 passes: in an 8-pass run the baseline peaked on validation in pass 2, then fell
    synthetic) data=(--data synthetic --rows 200000 --passes 2) ;;
    *) $PY -m data.shapes "$name" "$out/$name/data" --rows 60000 >/dev/null
       data=(--data "$out/$name/data/dataset.toml") ;;
  esac
  teacher=(--teacher-checkpoint "$out/$name/teacher")
  distill "$name" "${data[@]}" "${teacher[@]}" --report "$out/$name/report.json"
  case $name in
    dense_tabular)
      distill weak --config jobs/configs/weak_teacher.toml "${data[@]}" \
        --teacher-checkpoint "$out/weak/teacher" --report "$out/weak/report.json"
      distill weak_off --config jobs/configs/weak_teacher.toml "${data[@]}" --no-kd-guard \
        --teacher-checkpoint "$out/weak/teacher" --report "$out/weak/guard_off.json" ;;
    id_drift)
      distill patience "${data[@]}" "${teacher[@]}" --patience 2 \
        --report "$out/id_drift/patience.json" ;;
  esac
  case $name in
    movielens|dense_tabular|id_heavy)
      distill "tune_feat_$name" --config jobs/configs/tune_feat.toml "${data[@]}" \
        "${teacher[@]}" --report "$out/tune_feat/$name.json"
      $PY -m jobs.report_table --valid "$out/tune_feat/$name.json" ;;
  esac
done
$PY -m jobs.report_table "$out"/*/report.json
