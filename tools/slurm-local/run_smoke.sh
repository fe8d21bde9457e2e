#!/usr/bin/env bash
# The smoke study through SLURM with MLflow and Optuna on PostgreSQL, compared with the same
# study run locally (SQLite + journal). Opt-in (not in CI): needs root, installs Debian packages
# and starts daemons through setup.sh. Takes ~30-40 min on 2 cores (both runs).
#
#   bash tools/slurm-local/run_smoke.sh                 # both runs, then compare the tables
#   SKIP_LOCAL=1 LOCAL_TREE=/path/to/local/tree bash tools/slurm-local/run_smoke.sh
#                                                       # reuse a finished local smoke tree
#   EXTRA_CONFIG=/path/overlay.yaml bash tools/slurm-local/run_smoke.sh
#                                                       # both runs with one more --configfile
#                                                       # overlay (e.g. fewer table rows: a rehearsal)
# Environment: WORK (default /tmp/stripes-slurm-proof), STRIPES_POP909 / STRIPES_POP909_STRUCTURE
# (default ../shared/data/...), CORES (default: all CPUs).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$REPO/tools/slurm-local"
WORK=${WORK:-/tmp/stripes-slurm-proof}
CORES=${CORES:-$(nproc)}
VENV_BIN=${VENV_BIN:-$REPO/.venv/bin}
export PATH="$VENV_BIN:$PATH"
export STRIPES_POP909=${STRIPES_POP909:-$(cd "$REPO/.." && pwd)/shared/data/pop909/POP909}
export STRIPES_POP909_STRUCTURE=${STRIPES_POP909_STRUCTURE:-$(cd "$REPO/.." && pwd)/shared/data/pop909-structure/POP909}
log() { printf '[run_smoke %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------- prerequisites
bash "$HERE/setup.sh"
python -c "import snakemake_executor_plugin_slurm, psycopg2" 2>/dev/null || {
    log "installing the [slurm] extra (snakemake-executor-plugin-slurm, psycopg2-binary)"
    python -m pip install --quiet -e "$REPO[slurm]"; }
mkdir -p "$WORK"
EXTRA=()
if [ -n "${EXTRA_CONFIG:-}" ]; then cp "$EXTRA_CONFIG" "$WORK/extra.yaml"; EXTRA=("$WORK/extra.yaml"); fi

# fresh databases for this proof (a rerun must not find the previous run's studies/runs)
PGURL=postgresql://stripes@127.0.0.1:5432
for db in stripes_proof_mlflow stripes_proof_optuna; do
    runuser -u postgres -- dropdb --if-exists "$db"
    runuser -u postgres -- createdb -O stripes "$db"
done

# one snapshot of the code for both runs (the working tree may change while they run)
rm -rf "$WORK/snapshot"; bash "$HERE/fresh_copy.sh" "$WORK/snapshot" >/dev/null
code_hash() { (cd "$1" && find src workflow Snakefile config profiles -type f \( -name '*.py' -o -name '*.smk' \
    -o -name '*.yaml' -o -name Snakefile \) | sort | xargs cat | sha256sum | cut -c1-16); }
SNAP_HASH=$(code_hash "$WORK/snapshot")
log "code snapshot $SNAP_HASH (git $(git -C "$REPO" rev-parse --short HEAD))"

# ---------------------------------------------------------------- local run (SQLite + journal)
LOCAL_TREE=${LOCAL_TREE:-$WORK/local}
if [ -n "${SKIP_LOCAL:-}" ]; then
    [ "$(code_hash "$LOCAL_TREE")" = "$SNAP_HASH" ] || log "WARNING: $LOCAL_TREE ran other code than the snapshot"
else
    rm -rf "$LOCAL_TREE"; cp -a "$WORK/snapshot" "$LOCAL_TREE"
    log "local smoke study in $LOCAL_TREE (--cores $CORES)"
    t0=$(date +%s)
    (cd "$LOCAL_TREE" && snakemake --cores "$CORES" --configfile config/smoke.yaml "${EXTRA[@]}" > "$WORK/local.log" 2>&1) \
        || { log "local run failed: $WORK/local.log"; tail -30 "$WORK/local.log"; exit 1; }
    LOCAL_S=$(( $(date +%s) - t0 )); log "local run: ${LOCAL_S} s"
fi

# ---------------------------------------------------------------- SLURM run (PostgreSQL)
SLURM_TREE=$WORK/slurm
rm -rf "$SLURM_TREE"; cp -a "$WORK/snapshot" "$SLURM_TREE"
cat > "$SLURM_TREE/scaleout.yaml" <<YAML
# written by tools/slurm-local/run_smoke.sh: the shared stores of a multi-machine study
mlflow:
  tracking_uri: $PGURL/stripes_proof_mlflow
tune:
  storage: {backend: rdb, url: "$PGURL/stripes_proof_optuna"}
YAML
# CPU-only one-node cluster: no GPU request, the cpu partition, memory that fits this node
export STRIPES_SLURM_GPUS=0 STRIPES_SLURM_PARTITION=cpu STRIPES_SLURM_CPUS=$CORES
export STRIPES_SLURM_GPU_MEM_MB=${STRIPES_SLURM_GPU_MEM_MB:-2500}
log "SLURM smoke study in $SLURM_TREE"
t0=$(date +%s)
(cd "$SLURM_TREE" && snakemake --executor slurm --workflow-profile profiles/slurm \
    --slurm-status-command squeue --slurm-init-seconds-before-status-checks 5 \
    --configfile config/smoke.yaml "${EXTRA[@]}" scaleout.yaml > "$WORK/slurm.log" 2>&1) \
    || { log "SLURM run failed: $WORK/slurm.log"; tail -40 "$WORK/slurm.log"; exit 1; }
SLURM_S=$(( $(date +%s) - t0 )); log "SLURM run: ${SLURM_S} s"

# ---------------------------------------------------------------- what ran where, and the tables
n_sbatch=$(grep -c "submitted with SLURM jobid" "$WORK/slurm.log" || true)
log "SLURM jobs submitted: $n_sbatch"
python - "$SLURM_TREE" <<'PY'
import json, sys
from pathlib import Path
import optuna
from mlflow.tracking import MlflowClient
tree = Path(sys.argv[1])
info = json.loads((tree / "results/mlflow/experiment.json").read_text())
assert info["tracking_uri"].startswith("postgresql://"), info
c = MlflowClient(info["tracking_uri"])
runs = c.search_runs([info["experiment_id"]], max_results=5000)
by = {}
for r in runs:
    by.setdefault((r.data.tags.get("stage"), r.info.status), 0)
    by[(r.data.tags.get("stage"), r.info.status)] += 1
print("MLflow (PostgreSQL) runs by stage/status:", dict(sorted(by.items(), key=str)))
spec = json.loads(next((tree / "results/tune").glob("*/*/spec.json")).read_text())
names = optuna.get_all_study_names(storage=spec["storage"]["url"])
print(f"Optuna (PostgreSQL) studies: {len(names)}")
PY
# the PostgreSQL variants of tests/test_storage.py (skipped in CI, which has no server)
STRIPES_TEST_PG_MLFLOW=$PGURL/stripes_mlflow STRIPES_TEST_PG_OPTUNA=$PGURL/stripes_optuna \
    python -m pytest -q -p no:cacheprovider "$REPO/tests/test_storage.py" -k postgresql 2>&1 | tail -1
python "$HERE/compare_tables.py" "$LOCAL_TREE/results/tables" "$SLURM_TREE/results/tables" \
    --metrics "$LOCAL_TREE/results/eval" "$SLURM_TREE/results/eval" | tee "$WORK/compare.txt"
log "times: local ${LOCAL_S:-?} s, SLURM ${SLURM_S} s; logs in $WORK"
grep -q " 0 difference(s)" "$WORK/compare.txt" && ! grep -q "[1-9][0-9]* difference(s)" "$WORK/compare.txt"
