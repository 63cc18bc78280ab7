#!/usr/bin/env bash
# Makes a CA and the certificates of examples/secure/: one per node (CN node-<id>, SANs
# DNS:node-<id>.quorra-secure and IP:127.0.0.1) and one client certificate (CN alice, for
# mTLS). Needs openssl.
#
#   examples/secure/make-certs.sh [out-dir]      (default: examples/secure/certs)
#
# Keys are EC P-256, certificates valid for 365 days. The CA key stays in out-dir: keep it
# off the brokers in anything but a try on one machine.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/certs}
cluster_id=${QUORRA_CLUSTER_ID:-quorra-secure}
mkdir -p "$out"
cd "$out"
umask 077
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

key ca.key
openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=Quorra example CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.pem 2>/dev/null

# issue <name> <common name> <subjectAltName>
issue() {
    key "$1.key"
    openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr" 2>/dev/null
    printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 -sha256 \
        -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

for n in 1 2 3; do
    issue "node$n" "node-$n" "DNS:node-$n.$cluster_id,IP:127.0.0.1"
done
issue alice alice "DNS:alice.users.$cluster_id"
chmod 644 ca.pem ./*.pem
echo "certificates in $out: ca.pem, node{1,2,3}.pem/.key, alice.pem/.key"
