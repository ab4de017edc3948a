#!/bin/sh
# build-stepca.sh: builds smallstep step-ca (0.19, Debian bookworm) for
# tests/upstreams/stepca.rs, from Debian's Go source packages, with no network
# besides apt. Debian ships the step-ca library (golang-github-smallstep-
# certificates-dev) but no command, so this script writes two small main
# packages and builds them in GOPATH mode:
#
#   step-ca       the CA server: the library's `commands.AppCommand`
#   stepca-init   writes a test CA: root + intermediate, a JWK provisioner
#                 whose private key is encrypted (a JWE, as `step ca init`
#                 makes it), an X5C provisioner, a badger database
#
# Output: $ACMEPROXY_STEPCA_DIR (default /var/tmp/acmeproxy-stepca)/bin/.
# Idempotent: installs packages only when missing (needs root then) and
# rebuilds only when this script or the Debian package changed. Prints what
# it did.
set -eu

CACHE="${ACMEPROXY_STEPCA_DIR:-/var/tmp/acmeproxy-stepca}"
PACKAGES="golang-go golang-github-smallstep-certificates-dev gcc libc6-dev openssl"
say() { echo "build-stepca: $*"; }

start=$(date +%s)
missing=""
for pkg in $PACKAGES; do
    case "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" in
        *" ok installed") ;;
        *) missing="$missing $pkg" ;;
    esac
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        say "missing packages:$missing; run this script as root" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    say "apt-get install$missing"
    timeout 900 apt-get update -q >/dev/null
    # shellcheck disable=SC2086 # the package list is meant to split
    timeout 1800 apt-get install -y -q --no-install-recommends $missing >/dev/null
    say "packages installed in $(($(date +%s) - start))s"
else
    say "packages present: $PACKAGES"
fi

# The stamp names what the binaries were built from.
version=$(dpkg-query -W -f='${Version}' golang-github-smallstep-certificates-dev)
stamp="$(sha256sum "$0" | cut -d' ' -f1) $version"
if [ -x "$CACHE/bin/step-ca" ] && [ -x "$CACHE/bin/stepca-init" ] \
    && [ "$(cat "$CACHE/stamp" 2>/dev/null || true)" = "$stamp" ]; then
    say "up to date: $CACHE/bin/step-ca and $CACHE/bin/stepca-init (step-ca $version)"
    exit 0
fi

src="$CACHE/gopath/src/acmeproxy-stepca"
mkdir -p "$src/step-ca" "$src/stepca-init" "$CACHE/bin"

cat > "$src/step-ca/main.go" <<'GO'
// step-ca for acmeproxy's tests: the CA command from Debian's library.
// Usage: step-ca CONFIG [--password-file FILE] [--issuer-password-file FILE]
package main

import (
	"fmt"
	"os"

	"github.com/smallstep/certificates/commands"
	"github.com/urfave/cli"

	_ "github.com/smallstep/certificates/cas/softcas"
)

func main() {
	app := cli.NewApp()
	app.Name = "step-ca"
	app.Usage = "step-ca 0.19 built from Debian sources (acmeproxy tests)"
	app.Version = "0.19.0-debian"
	app.Flags = commands.AppCommand.Flags
	app.Action = commands.AppCommand.Action
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "step-ca:", err)
		os.Exit(1)
	}
}
GO

cat > "$src/stepca-init/main.go" <<'GO'
// stepca-init writes a step-ca test CA into DIR:
//
//	certs/root_ca.crt, certs/intermediate_ca.crt, secrets/*_key (EC P-256,
//	unencrypted), provisioner/jwk.jwe (the JWK provisioner's private key,
//	encrypted with -password-file like `step ca init` does), provisioner/
//	jwk.json (the same key in clear), config/ca.json, db/.
//
// The X5C provisioner trusts the PEM roots in -x5c-roots.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.step.sm/crypto/jose"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "stepca-init: "+format+"\n", args...)
	os.Exit(1)
}

func write(path string, data []byte, mode os.FileMode) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		fail("%v", err)
	}
	if err := os.WriteFile(path, data, mode); err != nil {
		fail("%v", err)
	}
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		fail("%v", err)
	}
	return n
}

// issue makes a CA certificate for a new P-256 key, signed by parent (or
// self-signed), and writes the certificate and key PEM files.
func issue(cn string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, pathLen int, crt, key string) (*x509.Certificate, *ecdsa.PrivateKey) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		fail("%v", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            pathLen,
		MaxPathLenZero:        pathLen == 0,
	}
	if parent == nil {
		parent, parentKey = tmpl, priv
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &priv.PublicKey, parentKey)
	if err != nil {
		fail("%v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		fail("%v", err)
	}
	keyDer, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		fail("%v", err)
	}
	write(crt, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	write(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDer}), 0o600)
	return cert, priv
}

func main() {
	dir := flag.String("dir", "", "CA directory")
	address := flag.String("address", "127.0.0.1:9443", "listen address")
	dns := flag.String("dns", "127.0.0.1,localhost", "names of the CA's TLS certificate")
	name := flag.String("name", "acmeproxy test", "PKI name")
	jwkName := flag.String("jwk-provisioner", "ra-jwk", "JWK provisioner name")
	passwordFile := flag.String("password-file", "", "password that encrypts the JWK provisioner key")
	x5cName := flag.String("x5c-provisioner", "ra-x5c", "X5C provisioner name")
	x5cRoots := flag.String("x5c-roots", "", "PEM roots the X5C provisioner trusts")
	duration := flag.String("max-duration", "", "longest certificate lifetime; empty: no claims, step-ca's defaults (24h default and maximum)")
	flag.Parse()
	if *dir == "" || *passwordFile == "" || *x5cRoots == "" {
		fail("usage: stepca-init -dir DIR -password-file FILE -x5c-roots PEM [-address A] [-dns N,N]")
	}
	password, err := os.ReadFile(*passwordFile)
	if err != nil {
		fail("%v", err)
	}
	roots, err := os.ReadFile(*x5cRoots)
	if err != nil {
		fail("%v", err)
	}
	d, err := filepath.Abs(*dir)
	if err != nil {
		fail("%v", err)
	}

	root, rootKey := issue(*name+" Root CA", nil, nil, 1,
		filepath.Join(d, "certs/root_ca.crt"), filepath.Join(d, "secrets/root_ca_key"))
	issue(*name+" Intermediate CA", root, rootKey, 0,
		filepath.Join(d, "certs/intermediate_ca.crt"), filepath.Join(d, "secrets/intermediate_ca_key"))

	jwk, err := jose.GenerateJWK("EC", "P-256", "ES256", "sig", "", 0)
	if err != nil {
		fail("generating the JWK: %v", err)
	}
	enc, err := jose.EncryptJWK(jwk, password)
	if err != nil {
		fail("encrypting the JWK: %v", err)
	}
	compact, err := enc.CompactSerialize()
	if err != nil {
		fail("%v", err)
	}
	public := jwk.Public()
	clear, err := json.Marshal(jwk)
	if err != nil {
		fail("%v", err)
	}
	write(filepath.Join(d, "provisioner/jwk.jwe"), []byte(compact), 0o600)
	write(filepath.Join(d, "provisioner/jwk.json"), clear, 0o600)

	var names []string
	for _, n := range strings.Split(*dns, ",") {
		if n = strings.TrimSpace(n); n != "" {
			names = append(names, n)
		}
	}
	if len(names) == 0 || net.ParseIP(names[0]) == nil && names[0] == "" {
		fail("-dns names nothing")
	}
	claims := map[string]interface{}{
		"minTLSCertDuration":     "5m",
		"maxTLSCertDuration":     *duration,
		"defaultTLSCertDuration": "24h",
	}
	config := map[string]interface{}{
		"root":     filepath.Join(d, "certs/root_ca.crt"),
		"crt":      filepath.Join(d, "certs/intermediate_ca.crt"),
		"key":      filepath.Join(d, "secrets/intermediate_ca_key"),
		"address":  *address,
		"dnsNames": names,
		"logger":   map[string]interface{}{"format": "text"},
		"db":       map[string]interface{}{"type": "badgerv2", "dataSource": filepath.Join(d, "db")},
		"authority": map[string]interface{}{
			"claims": claims,
			"provisioners": []interface{}{
				map[string]interface{}{
					"type":         "JWK",
					"name":         *jwkName,
					"key":          public,
					"encryptedKey": compact,
				},
				map[string]interface{}{
					"type":  "X5C",
					"name":  *x5cName,
					"roots": base64.StdEncoding.EncodeToString(roots),
				},
			},
		},
		"tls": map[string]interface{}{"minVersion": 1.2, "maxVersion": 1.3},
	}
	if *duration == "" {
		// A stock CA, as `step ca init` makes it: no claims at all.
		delete(config["authority"].(map[string]interface{}), "claims")
	}
	out, err := json.MarshalIndent(config, "", "  ")
	if err != nil {
		fail("%v", err)
	}
	write(filepath.Join(d, "config/ca.json"), out, 0o600)
	if err := os.MkdirAll(filepath.Join(d, "db"), 0o700); err != nil {
		fail("%v", err)
	}
	fmt.Printf("kid=%s\n", public.KeyID)
}
GO

say "building step-ca and stepca-init (GOPATH mode, cgo) in $CACHE"
t0=$(date +%s)
(
    cd "$src"
    export GO111MODULE=off GOFLAGS='' GOPATH="$CACHE/gopath:/usr/share/gocode" GOCACHE="$CACHE/gocache"
    for cmd in step-ca stepca-init; do
        if ! timeout 1800 go build -trimpath -o "$CACHE/bin/$cmd" "./$cmd" 2>"$CACHE/build-$cmd.log"; then
            cat "$CACHE/build-$cmd.log" >&2
            say "building $cmd failed" >&2
            exit 1
        fi
    done
)
"$CACHE/bin/step-ca" --version >/dev/null || { say "the built step-ca does not run" >&2; exit 1; }
echo "$stamp" > "$CACHE/stamp"
say "built in $(($(date +%s) - t0))s: $CACHE/bin/step-ca, $CACHE/bin/stepca-init (step-ca $version; total $(($(date +%s) - start))s)"
