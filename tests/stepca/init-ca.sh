#!/bin/sh
# init-ca.sh DIR PORT [MAX_DURATION]: a fresh step-ca test CA in DIR
# listening on 127.0.0.1:PORT, built with the binaries of build-stepca.sh.
# Without MAX_DURATION the CA has no claims, as `step ca init` makes it:
# step-ca's defaults apply (certificates of 24h by default and at most).
# With it (e.g. 8760h) the claims are min 5m, default 24h, max MAX_DURATION.
#
#   DIR/config/ca.json        root + intermediate, badger database, provisioners:
#                               JWK "ra-jwk" (private key encrypted with
#                               DIR/password, as `step ca init` stores it)
#                               X5C "ra-x5c" trusting DIR/x5c/root.crt
#   DIR/certs/root_ca.crt     the root the RA pins by fingerprint
#   DIR/provisioner/jwk.jwe   the JWK provisioner key (= encryptedKey), jwk.json in clear
#   DIR/x5c/ra.crt, ra.key    the RA's client certificate (leaf + X5C root) and key
#   DIR/env                   FINGERPRINT=, JWK_KID=, ... for the tests
#
# Refuses a DIR that already holds a CA. Only loopback.
set -eu

dir="${1:?usage: init-ca.sh DIR PORT [MAX_DURATION]}"
port="${2:?usage: init-ca.sh DIR PORT [MAX_DURATION]}"
max_duration="${3:-}"
bin="${ACMEPROXY_STEPCA_DIR:-/var/tmp/acmeproxy-stepca}/bin"
[ -x "$bin/stepca-init" ] || { echo "init-ca: $bin/stepca-init missing; run tests/stepca/build-stepca.sh" >&2; exit 1; }
[ ! -e "$dir/config/ca.json" ] || { echo "init-ca: $dir already holds a CA" >&2; exit 1; }
mkdir -p "$dir/x5c"
dir=$(cd "$dir" && pwd)
umask 077

openssl rand -hex 16 | tr -d '\n' > "$dir/password"

# The X5C provisioner's own small PKI: a root, and a client certificate for the RA.
cat > "$dir/x5c/openssl.cnf" <<'CNF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[root_ext]
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ra_ext]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
(
    cd "$dir/x5c"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out root.key
    openssl req -new -x509 -config openssl.cnf -extensions root_ext -key root.key \
        -subj "/CN=acmeproxy test X5C root" -days 3650 -out root.crt
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ra.key
    openssl req -new -config openssl.cnf -key ra.key -subj "/CN=acmeproxy-ra" -out ra.csr
    openssl x509 -req -in ra.csr -CA root.crt -CAkey root.key -CAcreateserial \
        -extfile openssl.cnf -extensions ra_ext -days 1825 -out ra-leaf.crt
    cat ra-leaf.crt root.crt > ra.crt
) > "$dir/x5c/openssl.log" 2>&1 || { cat "$dir/x5c/openssl.log" >&2; exit 1; }

kid=$(STEPPATH="$dir/steppath" "$bin/stepca-init" -dir "$dir" -address "127.0.0.1:$port" \
    -dns 127.0.0.1,localhost -password-file "$dir/password" -x5c-roots "$dir/x5c/root.crt" \
    -jwk-provisioner ra-jwk -x5c-provisioner ra-x5c -max-duration "$max_duration" | sed -n 's/^kid=//p')
fingerprint=$(openssl x509 -in "$dir/certs/root_ca.crt" -outform DER | sha256sum | cut -d' ' -f1)

cat > "$dir/env" <<ENV
CA_URL=https://127.0.0.1:$port
FINGERPRINT=$fingerprint
JWK_PROVISIONER=ra-jwk
JWK_KID=$kid
X5C_PROVISIONER=ra-x5c
ENV
echo "init-ca: step-ca test CA in $dir (https://127.0.0.1:$port, root $fingerprint, JWK ra-jwk kid $kid, X5C ra-x5c)"
