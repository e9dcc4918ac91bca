#!/usr/bin/env bash
# bench/compare.sh: runs our workloads (cargo bench --bench workloads) and the PyTorch
# reference's (bench/pytorch_reference.py) with the same thread count, GD_BENCH_BIG,
# GD_WORKLOADS and GD_BENCH_REPS, one after the other, then joins their `RESULT {json}` lines
# into a markdown table: workload | ours (s) | PyTorch (s) | ours/PyTorch.
# With --rounds N the two sides run N times, alternately, and the table shows each side's
# median over the rounds, their ratio and the range of the per-round ratios: on a shared
# machine one round can be off by 20-30%.
# If the PyTorch side cannot run, the table still shows our column and says why the other is
# empty. See bench/README.md.
#
#   bench/compare.sh [--reference PATH] [--threads N] [--rounds N]
#   GD_BENCH_BIG=1 bench/compare.sh --reference ~/src/guided-diffusion   # also the 64x64 ones
#   GD_WORKLOADS=unet_fwd_small,train_step_small bench/compare.sh
#
# Environment: RAYON_NUM_THREADS (default: the CPU count), GUIDED_DIFFUSION_REF, GD_BENCH_BIG,
# GD_WORKLOADS, GD_BENCH_REPS, GD_COMPARE_ROUNDS (--rounds), GD_BENCH_CLOCK=cpu (both sides
# time in process CPU seconds: on a loaded machine, with --threads 1); CARGO and PYTHON pick
# the programs (cargo, python3).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
ref="${GUIDED_DIFFUSION_REF:-}"
threads="${RAYON_NUM_THREADS:-}"
rounds="${GD_COMPARE_ROUNDS:-1}"

while [ $# -gt 0 ]; do
    case "$1" in
        --reference) ref="${2:?--reference needs a path}"; shift 2 ;;
        --reference=*) ref="${1#*=}"; shift ;;
        --threads) threads="${2:?--threads needs a number}"; shift 2 ;;
        --threads=*) threads="${1#*=}"; shift ;;
        --rounds) rounds="${2:?--rounds needs a number}"; shift 2 ;;
        --rounds=*) rounds="${1#*=}"; shift ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "compare.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$threads" ]; then
    threads=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
fi
case "$threads" in
    ''|*[!0-9]*|0) echo "compare.sh: --threads must be a positive number, got '$threads'" >&2; exit 2 ;;
esac
case "$rounds" in
    ''|*[!0-9]*|0) echo "compare.sh: --rounds must be a positive number, got '$rounds'" >&2; exit 2 ;;
esac

export RAYON_NUM_THREADS="$threads"
export GD_BENCH_BIG="${GD_BENCH_BIG:-}" GD_WORKLOADS="${GD_WORKLOADS:-}" GD_BENCH_REPS="${GD_BENCH_REPS:-}"
export GD_BENCH_CLOCK="${GD_BENCH_CLOCK:-}"
cargo="${CARGO:-cargo}"
python="${PYTHON:-python3}"

# The machine's load before we add ours (1-minute average; empty where unknown).
load0=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || true)

out=$(mktemp -d "${TMPDIR:-/tmp}/gd-compare.XXXXXX")
trap 'rm -rf "$out"' EXIT

py_args=(--threads "$threads")
[ -n "$ref" ] && py_args+=(--reference "$ref")
rust_rc=0
py_rc=0
for r in $(seq 1 "$rounds"); do
    tag=""
    [ "$rounds" -gt 1 ] && tag=" (round $r of $rounds)"
    echo "== ours$tag: $cargo bench -p guided-diffusion --bench workloads ($threads threads)" >&2
    (cd "$root" && "$cargo" bench -p guided-diffusion --bench workloads) | tee "$out/rust.$r.txt"
    rc=${PIPESTATUS[0]}
    [ "$rc" != 0 ] && rust_rc=$rc

    echo "== PyTorch$tag: $python bench/pytorch_reference.py --threads $threads${ref:+ --reference $ref}" >&2
    if command -v "$python" >/dev/null 2>&1; then
        "$python" "$here/pytorch_reference.py" "${py_args[@]}" 2>"$out/torch.err" | tee "$out/torch.$r.txt"
        py_rc=${PIPESTATUS[0]}
        cat "$out/torch.err" >&2
    else
        echo "$python not found: the PyTorch side needs python3 with torch and numpy" >"$out/torch.err"
        : >"$out/torch.$r.txt"
        py_rc=127
    fi
    # Without torch there is nothing to alternate with: one round of ours is enough.
    [ "$py_rc" = 2 ] || [ "$py_rc" = 127 ] && break
done

echo
join() {
    "$python" - "$out" "$out/torch.err" "$py_rc" "$rust_rc" "$threads" "$load0" <<'PY'
import glob, json, os, statistics, sys

out_dir, torch_err, py_rc, rust_rc, threads, load0 = sys.argv[1:7]
order = ["unet_fwd_small", "train_step_small", "unet_fwd_64", "clf_grad_64",
         "guided_ddim_step_64", "train_step_64", "inception_fid_64"]

def results(path):
    rows = {}
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("RESULT "):
                    d = json.loads(line[len("RESULT "):])
                    rows[d["workload"]] = d
    except (OSError, ValueError):
        pass
    return rows

def rounds(side):
    files = sorted(glob.glob(os.path.join(out_dir, f"{side}.*.txt")),
                   key=lambda p: int(p.rsplit(".", 2)[-2]))
    return [results(p) for p in files]

our_rounds, their_rounds = rounds("rust"), rounds("torch")

def merged(rs):
    """Per workload: the last round's record, with `seconds` the median over the rounds."""
    rows = {}
    for w in {w for r in rs for w in r}:
        got = [r[w] for r in rs if w in r]
        rows[w] = dict(got[-1], seconds=statistics.median(d["seconds"] for d in got), n=len(got))
    return rows

ours, theirs = merged(our_rounds), merged(their_rounds)
names = [w for w in order if w in ours or w in theirs]
names += sorted(w for w in set(ours) | set(theirs) if w not in order)
multi = max(len(our_rounds), len(their_rounds)) > 1

def secs(d):
    return f"{d['seconds']:.4g}" if d else "—"

def round_ratios(w):
    return [a[w]["seconds"] / b[w]["seconds"] for a, b in zip(our_rounds, their_rounds)
            if w in a and w in b and b[w]["seconds"] > 0]

what = "median of the timed calls after one warm-up"
if os.environ.get("GD_BENCH_CLOCK", "").strip().lower() == "cpu":
    what += ", in process CPU seconds (GD_BENCH_CLOCK=cpu)"
if multi:
    what += f"; each side's median over {len(our_rounds)} rounds, run alternately"
def cpu():
    """The CPU model and its bf16 / vector class, from /proc/cpuinfo (Linux)."""
    model, flags = "unknown CPU", set()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, val = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = val.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(val.split())
    except OSError:
        pass
    if "amx_bf16" in flags:
        kind = "AMX"
    elif "avx512_bf16" in flags:
        kind = "AVX512_BF16, no AMX"
    elif "avx512f" in flags:
        kind = "AVX-512, no bf16"
    elif "avx2" in flags:
        kind = "AVX2 only"
    else:
        kind = "no AVX2"
    return f"{model} ({kind}; {os.cpu_count()} CPUs)"

print(f"CPU: {cpu()}.")
print(f"Threads: {threads} (RAYON_NUM_THREADS for ours, torch.set_num_threads for PyTorch); {what}.")
print()
if multi:
    print("| workload | ours (s) | PyTorch (s) | ours/PyTorch | per-round ours/PyTorch |")
    print("|---|---:|---:|---:|---|")
else:
    print("| workload | ours (s) | PyTorch (s) | ours/PyTorch |")
    print("|---|---:|---:|---:|")
for w in names:
    a, b = ours.get(w), theirs.get(w)
    ratio = f"{a['seconds'] / b['seconds']:.2f}" if a and b and b["seconds"] > 0 else "—"
    row = f"| {w} | {secs(a)} | {secs(b)} | {ratio} |"
    if multi:
        row += " " + (", ".join(f"{r:.2f}" for r in round_ratios(w)) or "—") + " |"
    print(row)
print()
print("ours/PyTorch below 1 means ours is faster.")
try:
    import os
    load, cpus = float(load0), os.cpu_count() or 1
    if load > 0.5 * cpus:
        print(f"Warning: the load average was {load:.1f} on {cpus} CPUs before the runs: the machine "
              "is busy and the timings are unreliable (PyTorch's OpenMP barriers suffer most from "
              "contention); compare on an idle machine.")
except ValueError:
    pass
for w in names:
    a, b = ours.get(w), theirs.get(w)
    if a and b and a.get("params") != b.get("params"):
        print(f"Warning: {w}: the networks differ ({a.get('params')} parameters ours, "
              f"{b.get('params')} PyTorch's).")
    if a and b and a.get("threads") != b.get("threads"):
        print(f"Warning: {w}: {a.get('threads')} threads ours, {b.get('threads')} PyTorch's.")
    if a and b and a.get("batch") != b.get("batch"):
        print(f"Warning: {w}: batch {a.get('batch')} ours, {b.get('batch')} PyTorch's.")
if not names:
    print("No results from either side.")
if rust_rc != "0":
    print(f"Our side exited with status {rust_rc}; missing rows of ours failed (see above).")
if py_rc != "0":
    try:
        why = open(torch_err).read().strip()
    except OSError:
        why = ""
    if not theirs:
        print(f"The PyTorch column is empty: pytorch_reference.py exited with status {py_rc}.")
    else:
        print(f"pytorch_reference.py exited with status {py_rc}; some workloads are missing.")
    if why:
        print("Its message:")
        for line in why.splitlines():
            print("    " + line)
PY
}
if command -v "$python" >/dev/null 2>&1; then
    join
else
    # No python3 at all: our seconds straight from the RESULT lines.
    echo "| workload | ours (s) | PyTorch (s) | ours/PyTorch |"
    echo "|---|---:|---:|---:|"
    sed -n 's/^RESULT .*"workload": *"\([^"]*\)".*/\1/p' "$out/rust.1.txt" | while read -r w; do
        s=$(grep "\"workload\": *\"$w\"" "$out/rust.1.txt" | sed -n 's/.*"seconds": *\([0-9.eE+-]*\).*/\1/p')
        echo "| $w | $s | — | — |"
    done
    echo
    echo "The PyTorch column is empty: $python was not found (the PyTorch side needs python3 with torch and numpy)."
fi
exit "$rust_rc"
