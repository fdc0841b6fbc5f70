#!/usr/bin/env bash
# Run the small synthetic workflow (prepare + train, tiny settings) through a real SLURM on this machine:
# a single-node slurmctld + slurmd on localhost (two fake GPUs as gres) with slurmdbd accounting (MariaDB),
# submitted to with profiles/slurm and the official executor plugin. Prints the sacct lines of the jobs and
# the wall time, then stops the daemons. Needs root on Debian/Ubuntu (installs slurm-wlm, slurmdbd, munge and
# mariadb-server when missing). Everything lives in a temporary folder, linked for the run from
# /etc/slurm/slurm.conf (the executor plugin starts `srun` inside each job without $SLURM_CONF, so srun
# reads the default path); the script refuses to run where another slurm.conf is there already.
#
#   bash scripts/slurm_local.sh            # summary also written to results/slurm/run.log
#   KEEP=1 bash scripts/slurm_local.sh     # keep the temporary folder (configs, daemon logs, workflow copy)
#
# Environment: PYTHON (default .venv/bin/python), SLURM_RUN_LOG (summary file), PORT_BASE (default 6817:
# slurmctld, +1 slurmd, +2 slurmdbd, +3 MariaDB), EPOCHS (default 3), WF_TIMEOUT (default 900 s).
# Extra arguments go to snakemake.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
SUMMARY=${SLURM_RUN_LOG:-$REPO/results/slurm/run.log}
EPOCHS=${EPOCHS:-3}
PORT=${PORT_BASE:-6817}
T0=$(date +%s.%N)
now() { date +%s.%N; }
since() { "$PY" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
mkdir -p "$(dirname "$SUMMARY")"
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

# --- 1. packages ---------------------------------------------------------------------------------------
missing=""
for tool in slurmctld slurmd slurmdbd sacct munged mariadbd; do command -v $tool >/dev/null || missing=1; done
if [ -n "$missing" ]; then
  echo "installing slurm-wlm, slurmdbd, munge and mariadb-server (apt-get)..."
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    slurm-wlm slurmdbd munge mariadb-server >/dev/null
fi
if ! "$PY" -c "import snakemake_executor_plugin_slurm" 2>/dev/null; then
  "$PY" -m pip install -q --disable-pip-version-check -r "$REPO/requirements-slurm.txt"
fi
T_INSTALLED=$(now)

# --- 2. configuration (everything under $WORK) --------------------------------------------------------
WORK=$(mktemp -d /tmp/p2rec-slurm.XXXXXX)
chmod 755 "$WORK"
HOST=$(hostname -s)
DBPASS=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
mkdir -p "$WORK"/{munge,state,spool,log,dev,db}
for i in 0 1; do mknod "$WORK/dev/fakegpu$i" c 1 3; done  # stand-ins for /dev/nvidiaN (they are /dev/null)
dd if=/dev/urandom of="$WORK/munge/munge.key" bs=1024 count=1 status=none
chmod 755 "$WORK/munge"
chmod 400 "$WORK/munge/munge.key"
cat > "$WORK/slurm.conf" <<CONF
ClusterName=p2rec-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$WORK/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((PORT + 2))
AccountingStoragePass=$WORK/munge/munge.socket
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MinJobAge=600
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
MpiDefault=none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=2 RealMemory=32000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
echo "NodeName=$HOST Name=gpu File=$WORK/dev/fakegpu[0-1]" > "$WORK/gres.conf"
cat > "$WORK/slurmdbd.conf" <<CONF
DbdHost=localhost
DbdPort=$((PORT + 2))
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$WORK/munge/munge.socket
LogFile=$WORK/log/slurmdbd.log
PidFile=$WORK/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((PORT + 3))
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
CONF
chmod 600 "$WORK/slurmdbd.conf"
export SLURM_CONF=$WORK/slurm.conf
DEFAULT_CONF=/etc/slurm/slurm.conf
if [ -e "$DEFAULT_CONF" ] || [ -L "$DEFAULT_CONF" ]; then
  case "$(readlink "$DEFAULT_CONF" || true)" in
    /tmp/p2rec-slurm.*) rm -f "$DEFAULT_CONF" ;;  # left by an earlier run of this script
    *) echo "$DEFAULT_CONF exists (a real SLURM?): not touching it" >&2; rm -rf "$WORK"; exit 1 ;;
  esac
fi
mkdir -p /etc/slurm
ln -s "$SLURM_CONF" "$DEFAULT_CONF"

# --- 3. daemons, stopped on any exit ------------------------------------------------------------------
stop() {
  set +e
  timeout 10 scontrol shutdown >/dev/null 2>&1
  for f in slurmctld.pid slurmd.pid slurmdbd.pid db/mariadb.pid munge/munged.pid; do
    [ -f "$WORK/$f" ] || continue
    pid=$(cat "$WORK/$f")
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null
  done
  [ "$(readlink "$DEFAULT_CONF")" = "$SLURM_CONF" ] && rm -f "$DEFAULT_CONF"
  if [ -n "${KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap stop EXIT
munged --force --socket="$WORK/munge/munge.socket" --key-file="$WORK/munge/munge.key" \
  --pid-file="$WORK/munge/munged.pid" --log-file="$WORK/log/munged.log" --seed-file="$WORK/munge/seed"
mariadb-install-db --user=root --datadir="$WORK/db/data" --auth-root-authentication-method=socket \
  --skip-test-db > "$WORK/log/mariadb-install.log" 2>&1
mariadbd --no-defaults --user=root --datadir="$WORK/db/data" --socket="$WORK/db/mariadb.sock" \
  --pid-file="$WORK/db/mariadb.pid" --bind-address=127.0.0.1 --port=$((PORT + 3)) \
  --log-error="$WORK/log/mariadb.log" --innodb-buffer-pool-size=32M </dev/null >/dev/null 2>&1 &
for _ in $(seq 60); do [ -S "$WORK/db/mariadb.sock" ] && break; sleep 0.5; done
mariadb --no-defaults --socket="$WORK/db/mariadb.sock" -u root -e "CREATE DATABASE slurm_acct_db;
  CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
slurmdbd  # reads slurmdbd.conf beside $SLURM_CONF
for _ in $(seq 20); do timeout 5 sacctmgr -i add cluster p2rec-local >/dev/null 2>&1 && break; sleep 0.5; done
slurmctld -i -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
state=""
for _ in $(seq 60); do
  [ -f "$WORK/slurmctld.pid" ] && ! kill -0 "$(cat "$WORK/slurmctld.pid")" 2>/dev/null && break
  state=$(timeout 5 sinfo -h -o %T 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 0.5
done
if [ "$state" != idle ]; then
  echo "the SLURM node did not come up (state '$state'); daemon logs:" >&2
  tail -n 20 "$WORK"/log/*.log >&2
  exit 1
fi
UP_S=$(since "$T_INSTALLED")

# --- 4. the workflow, in a temporary copy of this checkout --------------------------------------------
COPY=$WORK/p2rec
mkdir -p "$COPY"
(cd "$REPO" && git ls-files -z -co --exclude-standard | grep -zv '^results/' | tar --null -T - -cf -) \
  | tar -xf - -C "$COPY"
cat > "$COPY/tiny.yaml" <<CONF
datasets: [synthetic]
backbones: [sasrec]
variants: [none]
seeds: [1]
train: {epochs: $EPOCHS, patience: $EPOCHS, hidden: 32}
CONF
export PATH="$(dirname "$PY"):$PATH"
TARGET=results/runs/synthetic/sasrec/none/seed1/metrics.json
CMD=(snakemake "$TARGET" --configfile tiny.yaml --workflow-profile profiles/slurm --slurm-no-account
     --slurm-init-seconds-before-status-checks 2 --seconds-between-status-checks 2 --latency-wait 5 "$@")
PLUGIN=$("$PY" -m pip show snakemake-executor-plugin-slurm 2>/dev/null | sed -n 's/^Version: //p')
say "# scripts/slurm_local.sh, $(date -u +%Y-%m-%dT%H:%M:%SZ): $(slurmctld -V) + slurmdbd, snakemake-executor-plugin-slurm $PLUGIN, node $HOST CPUs=2 Gres=gpu:2 (fake devices)"
say "# tiny.yaml: $(tr '\n' ';' < "$COPY/tiny.yaml")"
say "\$ ${CMD[*]}"
T_WF=$(now)
set +e
(cd "$COPY" && timeout "${WF_TIMEOUT:-900}" "${CMD[@]}") > "$WORK/snakemake.out" 2>&1
rc=$?
set -e
WF_S=$(since "$T_WF")
grep -E "^(rule|localrule) |Job .* has been submitted|sbatch call|Finished jobid|steps \(.*\) done|Error" \
  "$WORK/snakemake.out" | sed 's/^/  /' | tee -a "$SUMMARY" || true
say "snakemake exit code: $rc"
say "sacct:"
sacct --allocations --parsable2 --starttime now-1hour \
  --format=JobID,Comment%60,State,ExitCode,Elapsed,ReqTRES%60,AllocTRES%60 2>&1 | sed 's/^/  /' | tee -a "$SUMMARY"
LEASE_LOG=$COPY/results/logs/train/synthetic/sasrec/none/seed1.log
if [ -f "$LEASE_LOG" ]; then
  say "train job log: $(grep 'p2rec gpu lease' "$LEASE_LOG" || echo 'no lease line')"
fi
if [ -f "$COPY/$TARGET" ]; then
  say "metrics.json: $("$PY" -c "import json,sys; m=json.load(open(sys.argv[1])); print(m['status'], 'epochs', m['epochs'], 'test ndcg@10', round(m['test']['ndcg@10'], 4))" "$COPY/$TARGET")"
fi
say "wall time: workflow ${WF_S} s (snakemake start to finish); daemons up ${UP_S} s; whole script $(since "$T0") s"
if [ "$rc" != 0 ]; then
  echo "--- snakemake output (tail) ---" >&2; tail -n 60 "$WORK/snakemake.out" >&2
  echo "--- daemon logs (tail) ---" >&2; tail -n 20 "$WORK"/log/*.log >&2
  exit "$rc"
fi
