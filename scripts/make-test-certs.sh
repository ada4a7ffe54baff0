#!/usr/bin/env bash
# Makes a throwaway CA and one certificate for vmctld (server and client use), for the migration
# tests and benchmarks: mutual TLS between daemons without touching a real PKI.
#   usage: scripts/make-test-certs.sh DIR [IP...]     (default IP: 127.0.0.1)
# Writes DIR/ca.pem, DIR/node.pem, DIR/node.key.
set -euo pipefail
dir="${1:?usage: make-test-certs.sh DIR [IP...]}"
shift
ips=("${@:-127.0.0.1}")
mkdir -p "$dir"
cd "$dir"
san="subjectAltName=DNS:localhost"
for ip in "${ips[@]}"; do san+=",IP:$ip"; done
curve=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${curve[@]}" -keyout ca.key -out ca.pem -days 2 -subj /CN=vmctl-test-ca \
  2>/dev/null
openssl req "${curve[@]}" -keyout node.key -out node.csr -subj /CN=vmctld 2>/dev/null
printf '%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" >ext.cnf
openssl x509 -req -in node.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out node.pem -days 2 \
  -extfile ext.cnf 2>/dev/null
rm -f node.csr ext.cnf ca.srl
