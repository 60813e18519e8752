#!/usr/bin/env bash
# One-shot GPU check (issue 15): run ONCE on the first machine with a CUDA GPU (the `device` tool) and get every
# GPU number in one go, within ~8 minutes:
#   1. build mtlguard._C from source with the CUDA kernels (that machine's own Python/torch; no network needed)
#   2. the CUDA op tests (MTLGUARD_REQUIRE_CUDA=1: a visible GPU without working CUDA kernels FAILS, never skips)
#   3. bench/ops.py --device cuda       (each op's fraction of the measured copy bandwidth)
#   4. bench/attacks.py --device cuda   (batched vs looped task gradients, ResNet-18 HPS)
#   5. bench/engine.py --device cuda --backend torch   (floor / generator / engine / naive, synthetic faces)
# All JSON (and the log) go to $OUT (or --out DIR); a summary table is printed at the end and written to
# summary.json.  Exit status: 0 all good; 1 a step failed (the summary names it); 2 usage error; 3 no GPU visible.
#
#   bash bench/gpu_check.sh                 # on the GPU machine (device tool: command "bash bench/gpu_check.sh")
#   bash bench/gpu_check.sh --dry-run       # print the steps, run nothing
#   bash bench/gpu_check.sh --cpu --quick   # the same steps on the CPU, tiny sizes (CI: tests/test_gpu_check.py)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

usage() {
  cat <<'EOF'
usage: bash bench/gpu_check.sh [--dry-run] [--cpu] [--quick] [--skip-build] [--utkface DIR] [--out DIR]
  --dry-run     print the steps (commands) and exit 0 without running anything
  --cpu         run every step on the CPU (argument handling and CPU paths; no GPU needed)
  --quick       tiny sizes (smoke run)
  --skip-build  use the mtlguard._C already built (default on the GPU: build from source)
  --utkface DIR real UTKFace folder for the engine benchmark (default: 300 synthetic faces)
  --out DIR     where JSON, log and summary go (default: $OUT, else ./gpu_check_out)
EOF
}

DRY=0; CPU=0; QUICK=0; SKIP_BUILD=0; UTK=""; OUTDIR="${OUT:-$ROOT/gpu_check_out}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --cpu) CPU=1 ;;
    --quick) QUICK=1 ;;
    --skip-build) SKIP_BUILD=1 ;;
    --utkface) [ $# -ge 2 ] || { echo "gpu_check: --utkface needs a DIR" >&2; usage >&2; exit 2; }; UTK="$2"; shift ;;
    --out) [ $# -ge 2 ] || { echo "gpu_check: --out needs a DIR" >&2; usage >&2; exit 2; }; OUTDIR="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[ -n "$UTK" ] && [ ! -d "$UTK/images" ] && { echo "gpu_check: --utkface $UTK has no images/ folder" >&2; exit 2; }

DEV=cuda; [ "$CPU" = 1 ] && DEV=cpu
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}"
[ "$CPU" = 1 ] || export MTLGUARD_REQUIRE_CUDA=1

# ---- the steps (name, command) ---------------------------------------------------------------------------------
OPS_TESTS="tests/test_ops_apply_delta.py tests/test_ops_nan.py tests/test_ops_equivalence.py tests/test_ops_edge_cases.py"
if [ "$CPU" = 1 ]; then
  TEST_CMD="$PY -m pytest -q -p no:cacheprovider -rs tests/test_ops_apply_delta.py tests/test_ops_nan.py -k 'cpu and not utkface' --junitxml=$OUTDIR/op_tests.xml"
else
  TEST_CMD="$PY -m pytest -q -p no:cacheprovider -rs $OPS_TESTS -k cuda --junitxml=$OUTDIR/op_tests.xml"
fi
Q=""; [ "$QUICK" = 1 ] && Q="--quick"
OPS_CMD="$PY bench/ops.py --device $DEV $Q --out $OUTDIR/ops_$DEV.json"
ATK_CMD="$PY bench/attacks.py --device $DEV $Q --out $OUTDIR/attacks_$DEV.json"
if [ -n "$UTK" ]; then DATA="--utkface $UTK"; else DATA="--synthetic 300"; fi
if [ "$QUICK" = 1 ]; then
  ENG_EXTRA="--images 12 --repeats 1 --naive-images 2"; [ -z "$UTK" ] && DATA="--synthetic 12"
else
  ENG_EXTRA="--images 300 --repeats 3 --naive-images 60"
fi
ENG_CMD="$PY bench/engine.py --device $DEV --backend torch $DATA $ENG_EXTRA --out $OUTDIR/engine_${DEV}_torch.json"
if [ "$SKIP_BUILD" = 1 ] || [ "$CPU" = 1 ]; then
  BUILD_CMD=""
else
  BUILD_CMD="$PY -m pip install --no-build-isolation --no-deps --no-index -e ."
fi

if [ "$DRY" = 1 ]; then
  echo "gpu_check (dry run): device=$DEV out=$OUTDIR"
  echo "  check:  $PY -c 'import torch; torch.cuda.is_available()'   (required on the GPU)"
  echo "  build:  ${BUILD_CMD:-(skipped: the installed mtlguard._C is used)}"
  echo "  kernels: mtlguard.ops.backend_info() must report the extension$([ "$CPU" = 1 ] || echo ' with CUDA kernels')"
  echo "  tests:  $TEST_CMD"
  echo "  ops:    $OPS_CMD"
  echo "  attacks: $ATK_CMD"
  echo "  engine: $ENG_CMD"
  echo "  summary: $OUTDIR/summary.json"
  exit 0
fi

mkdir -p "$OUTDIR" || { echo "gpu_check: cannot create $OUTDIR" >&2; exit 2; }
LOG="$OUTDIR/gpu_check.log"
: > "$LOG"
START=$(date +%s)
FAILED=()
STATUS_FILE="$OUTDIR/.steps"
: > "$STATUS_FILE"
say() { echo "[gpu_check $(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
step() {  # step NAME COMMAND...: run, log, record pass/fail and seconds
  local name="$1"; shift
  local t0=$(date +%s)
  say "$name: $*"
  bash -c "$*" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "$name $rc $(( $(date +%s) - t0 ))" >> "$STATUS_FILE"
  if [ "$rc" != 0 ]; then FAILED+=("$name (exit $rc)"); say "FAILED: $name (exit $rc)"; fi
  return "$rc"
}

# ---- 0. environment -------------------------------------------------------------------------------------------
say "device=$DEV out=$OUTDIR python=$($PY -c 'import sys; print(sys.version.split()[0])')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$LOG"
CUDA_VISIBLE=$($PY -c 'import torch; print(int(torch.cuda.is_available()))' 2>>"$LOG")
say "torch $($PY -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)' 2>&1), cuda visible: ${CUDA_VISIBLE:-?}"
if [ "$CPU" = 0 ] && [ "${CUDA_VISIBLE:-0}" != 1 ]; then
  say "GPU CHECK FAILED: no CUDA GPU is visible to torch (use --cpu for the CPU dry run)"
  exit 3
fi

# ---- 1. build -------------------------------------------------------------------------------------------------
if [ -n "$BUILD_CMD" ]; then
  if ! step build "$BUILD_CMD"; then
    say "pip editable install failed; building in place instead (setup.py build_ext --inplace)"
    FAILED=()
    step build_inplace "$PY setup.py build_ext --inplace" || true
    # mtlguard.engine / mtlguard.export live in engine/ and export/: make them importable without the install
    mkdir -p "$OUTDIR/.site"
    printf 'import sys\nsys.path.insert(0, %r)\nimport mtlguard\nmtlguard.__path__.append(%r)\n' \
      "$ROOT/python" "$ROOT" > "$OUTDIR/.site/sitecustomize.py"
    export PYTHONPATH="$OUTDIR/.site:$ROOT/python:${PYTHONPATH:-}"
  fi
fi
step kernels "$PY - <<'PYEOF'
import json, sys, torch
from mtlguard import ops
info = ops.backend_info()
print(json.dumps(info))
need_cuda = '$DEV' == 'cuda'
if info['backend'] != 'extension':
    sys.exit('mtlguard._C is not in use: ' + str(info['error']))
if need_cuda and not info['cuda_kernels']:
    sys.exit('a CUDA GPU is visible but mtlguard._C has no CUDA kernels (was nvcc found at build time?)')
if need_cuda:  # one call of every op on the GPU, checked against the CPU kernel
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g); d = torch.randn(4, 3, 16, 16, generator=g) * 0.1
    a = ops.pgd_step(x.cuda(), x.cuda(), torch.sign(d).to(torch.int8).cuda(), 0.01, 0.03).cpu()
    b = ops.pgd_step(x, x, torch.sign(d).to(torch.int8), 0.01, 0.03)
    img = torch.randint(0, 256, (2, 50, 70, 3), generator=g, dtype=torch.uint8)
    dl = torch.randn(2, 3, 16, 16, generator=g) * 0.05
    u_gpu = ops.apply_delta_u8(img.cuda(), dl.cuda(), 8 / 255).cpu()
    u_cpu = ops.apply_delta_u8(img, dl, 8 / 255)
    if not (torch.allclose(a, b, atol=1e-6) and torch.equal(u_gpu, u_cpu)):
        sys.exit('CUDA kernels disagree with the CPU kernels (pgd_step / apply_delta_u8)')
    print('CUDA kernels run and agree with the CPU kernels')
PYEOF"
KERNELS_OK=$?

# ---- 2. op tests ----------------------------------------------------------------------------------------------
step op_tests "$TEST_CMD"
if [ "$CPU" = 0 ] && [ -f "$OUTDIR/op_tests.xml" ]; then
  SKIPS=$($PY -c "import sys, xml.etree.ElementTree as E; r = E.parse(sys.argv[1]).getroot(); s = r if r.tag == 'testsuite' else r.find('testsuite'); print(s.get('skipped', '0'))" "$OUTDIR/op_tests.xml" 2>/dev/null || echo '?')
  if [ "$SKIPS" != 0 ]; then
    FAILED+=("op_tests: $SKIPS CUDA test(s) skipped on a machine with a GPU")
    say "FAILED: $SKIPS CUDA op test(s) were skipped although a GPU is visible"
  fi
fi

# ---- 3-5. benchmarks ------------------------------------------------------------------------------------------
if [ "$KERNELS_OK" = 0 ]; then
  step ops_bench "$OPS_CMD"
  step attacks_bench "$ATK_CMD"
  step engine_bench "$ENG_CMD"
else
  say "kernels are not usable: benchmarks skipped (they would time the fallback)"
fi

# ---- summary --------------------------------------------------------------------------------------------------
$PY - "$OUTDIR" "$DEV" "$STATUS_FILE" "${FAILED[@]+"${FAILED[@]}"}" <<'PYEOF' 2>&1 | tee -a "$LOG"
import json, os, sys
out, dev, status_file, failed = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
def load(name):
    p = os.path.join(out, name)
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
steps = [line.split() for line in open(status_file) if line.strip()]
summary = {"device": dev, "steps": {s[0]: {"exit": int(s[1]), "seconds": int(s[2])} for s in steps}, "failed": failed}
rows = [("step", "result", "s")] + [(s[0], "ok" if s[1] == "0" else f"FAIL ({s[1]})", s[2]) for s in steps]
ops_ = load(f"ops_{dev}.json")
if ops_:
    summary["copy_bandwidth_gbs"] = ops_.get("copy_bandwidth_gbs")
    by_op = {}
    for r in ops_["results"]:
        by_op.setdefault(r["op"], []).append(r)
    summary["ops"] = {}
    for op, rs in by_op.items():
        fr = [r.get("fraction_of_copy_bandwidth") for r in rs if r.get("fraction_of_copy_bandwidth") is not None]
        sp = sorted(r["speedup"] for r in rs)
        summary["ops"][op] = {"fraction_of_copy_bw_min": min(fr) if fr else None,
                              "fraction_of_copy_bw_max": max(fr) if fr else None,
                              "speedup_vs_eager_min": sp[0], "speedup_vs_eager_max": sp[-1]}
        rows.append((f"op {op}", f"x{sp[0]:.2f}..x{sp[-1]:.2f} vs eager"
                     + (f", {min(fr):.0%}..{max(fr):.0%} of copy BW" if fr else ""), ""))
atk = load(f"attacks_{dev}.json")
if atk:
    summary["attacks"] = [{k: r[k] for k in ("T", "image_size", "ratio", "identical_adversarial_examples",
                                             "iters_per_s_batched", "iters_per_s_loop")} for r in atk["results"]]
    for r in atk["results"]:
        rows.append((f"attack T={r['T']} {r['image_size']}px", f"batched/loop x{r['ratio']:.2f} (goal {r['goal']}), "
                     f"identical {r['identical_adversarial_examples']}", ""))
eng = load(f"engine_{dev}_torch.json")
if eng:
    res = eng["results"]
    summary["engine"] = {k: res.get(k) for k in ("a_passthrough_img_per_s", "b_generator_only_img_per_s",
                                                 "c_engine_img_per_s", "d_naive_img_per_s", "c_over_min_ab", "c_over_d")}
    rows.append(("engine a/b/c/d img/s", " / ".join(str(res.get(k)) for k in (
        "a_passthrough_img_per_s", "b_generator_only_img_per_s", "c_engine_img_per_s", "d_naive_img_per_s")), ""))
w = [max(len(str(r[i])) for r in rows) for i in range(3)]
print("\n=== mtlguard GPU check summary (" + dev + ") ===")
for r in rows:
    print("  ".join(str(v).ljust(w[i]) for i, v in enumerate(r)))
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
PYEOF
rm -f "$STATUS_FILE"
say "total $(( $(date +%s) - START )) s; results in $OUTDIR"
if [ ${#FAILED[@]} -gt 0 ]; then
  say "GPU CHECK FAILED: ${FAILED[*]}"
  exit 1
fi
say "GPU check passed"
exit 0
