#!/bin/sh
# bench/compare.sh [SECONDS] [CONCURRENCY]: acmeproxy (softcas + sled) and
# the project's step-ca (tests/stepca, badger DB, an ACME provisioner added)
# one after the other on this machine, the same acmeproxy-bench settings
# against each (closed loop, a new account per flow, --warmup 5), then both
# figures and the ratio. Loopback only. step-ca validates http-01 on port 80
# only, so the generator listens there: run as root. `make bench-compare`
# builds step-ca first (tests/stepca/build-stepca.sh).
set -eu

secs="${1:-30}"
conc="${2:-64}"
top=$(cd "$(dirname "$0")/.." && pwd)
stepca_bin="${ACMEPROXY_STEPCA_DIR:-/var/tmp/acmeproxy-stepca}/bin"
[ -x "$stepca_bin/step-ca" ] || { echo "compare: $stepca_bin/step-ca missing; run tests/stepca/build-stepca.sh" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "compare: step-ca validates http-01 on port 80 only; run as root" >&2; exit 1; }

(cd "$top" && cargo build --release --locked -p acmeproxy -p acmeproxy-bench)
bin="$top/target/release"
work=$(mktemp -d /tmp/acmeproxy-compare.XXXXXX)
pids=""
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until $1 answers over HTTPS trusting $2.
wait_https() {
    i=0
    until curl -fsS --cacert "$2" -o /dev/null "$1" 2>/dev/null; do
        i=$((i + 1))
        [ "$i" -lt 300 ] || { echo "compare: $1 never answered" >&2; exit 1; }
        sleep 0.2
    done
}

# run NAME DIRECTORY ROOT PID [GENERATOR FLAGS...]
run() {
    name=$1 dir_url=$2 ca=$3 pid=$4
    shift 4
    echo "compare: $name for ${secs}s at concurrency $conc"
    "$bin/acmeproxy-bench" --directory "$dir_url" --ca-file "$ca" --concurrency "$conc" \
        --warmup 5 --duration "$secs" --server-pid "$pid" --json "$@" > "$work/$name.json"
}

# acmeproxy: softcas + sled, http-01 at the generator's responder.
ap="$work/acmeproxy"
mkdir -p "$ap"
ap_port=$(free_port)
cat > "$ap/ca.json" <<JSON
{"address": "127.0.0.1:$ap_port", "dnsNames": ["localhost", "127.0.0.1"], "dataDir": "$ap/data",
 "logger": {"format": "text"}, "metrics": {"enabled": false},
 "authority": {"type": "softcas", "provisioners": [{"type": "ACME", "name": "acme"}],
   "rateLimits": {"requestsPerIp": 0, "newAccountsPerIp": 0}},
 "validation": {"httpPort": 5002, "tlsAlpnPort": 5001, "resolvers": [], "timeoutSeconds": 15,
   "denyNetworks": []}}
JSON
"$bin/acmeproxy" serve "$ap/ca.json" > "$ap/server.log" 2>&1 &
ap_pid=$!
pids="$ap_pid"
wait_https "https://127.0.0.1:$ap_port/acme/acme/directory" "$ap/data/softcas/root.crt"
run acmeproxy "https://127.0.0.1:$ap_port/acme/acme/directory" "$ap/data/softcas/root.crt" "$ap_pid" \
    --http01-listen 0.0.0.0:5002
kill "$ap_pid"
wait "$ap_pid" 2>/dev/null || true

# step-ca: the project's test CA with an ACME provisioner.
sc="$work/stepca"
sc_port=$(free_port)
sh "$top/tests/stepca/init-ca.sh" "$sc" "$sc_port" > "$work/init-ca.log"
python3 - "$sc/config/ca.json" <<'PY'
import json, sys
path = sys.argv[1]
with open(path) as f:
    ca = json.load(f)
ca["authority"]["provisioners"].append({"type": "ACME", "name": "acme"})
with open(path, "w") as f:
    json.dump(ca, f, indent=2)
PY
(cd "$sc" && STEPPATH="$sc/steppath" exec "$stepca_bin/step-ca" "$sc/config/ca.json") > "$sc/step-ca.log" 2>&1 &
sc_pid=$!
pids="$pids $sc_pid"
wait_https "https://127.0.0.1:$sc_port/health" "$sc/certs/root_ca.crt"
run stepca "https://127.0.0.1:$sc_port/acme/acme/directory" "$sc/certs/root_ca.crt" "$sc_pid" \
    --http01-listen 0.0.0.0:80
kill "$sc_pid"
wait "$sc_pid" 2>/dev/null || true

python3 - "$work/acmeproxy.json" "$work/stepca.json" <<'PY'
import json, sys
a, s = (json.load(open(p)) for p in sys.argv[1:3])
def line(name, r):
    srv = r.get("server") or {}
    lat = r["latency_ms"]
    p99 = {k: v.get("p99_ms") for k, v in lat.items() if v.get("p99_ms") is not None}
    worst = max((v, k) for k, v in p99.items() if k not in ("finalize", "flow"))
    print(f"{name:9} {r['flows_per_sec']:8.1f} flows/s  errors {r['errors_total']:3}  "
          f"server CPU {srv.get('cpu_ms_per_flow', float('nan')):5.2f} ms/flow  "
          f"generator CPU {r['generator']['cpu_ms_per_flow']:4.2f} ms/flow  "
          f"worst non-finalize p99 {worst[0]:6.1f} ms ({worst[1]})  p99 finalize {p99.get('finalize', float('nan')):6.1f} ms")
line("acmeproxy", a)
line("step-ca", s)
ratio = a["flows_per_sec"] / s["flows_per_sec"] if s["flows_per_sec"] else float("inf")
print(f"ratio     {ratio:.2f}x step-ca's flows/s")
PY
echo "compare: reports in $work"
