#!/usr/bin/env bash
# Makes certificates for a Plinth (or etcd) cluster with client and peer mTLS, with openssl
# only. The README's "A three-member cluster with client and peer mTLS" uses it;
# tests/tests/peer_tls.rs runs it.
#
#   scripts/gen-certs.sh DIR ca                  DIR/ca.crt, DIR/ca.key: a new CA (P-256)
#   scripts/gen-certs.sh DIR cert NAME SANS      DIR/NAME.crt, DIR/NAME.key: CN=NAME, signed
#                                                by DIR/ca.*, valid as server and client for
#                                                SANS, e.g. "IP:10.0.0.1,DNS:etcd-1.example"
#
# Keys are ECDSA P-256 in PKCS#8 (what rustls and Go both read), readable by their owner only.
# Certificates are valid for DAYS days (default 365).
set -euo pipefail
dir=${1:?usage: gen-certs.sh DIR ca | gen-certs.sh DIR cert NAME SANS}
what=${2:?usage: gen-certs.sh DIR ca | gen-certs.sh DIR cert NAME SANS}
days=${DAYS:-365}
mkdir -p "$dir"
umask 077
case $what in
ca)
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" -days "$days" -subj "/CN=plinth-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
  ;;
cert)
  name=${3:?usage: gen-certs.sh DIR cert NAME SANS}
  sans=${4:?usage: gen-certs.sh DIR cert NAME SANS}
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$dir/$name.key" -out "$dir/$name.csr" -subj "/CN=$name"
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=$sans" > "$dir/$name.ext"
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days "$days" -extfile "$dir/$name.ext" -out "$dir/$name.crt"
  rm -f "$dir/$name.csr" "$dir/$name.ext"
  ;;
*)
  echo "usage: gen-certs.sh DIR ca | gen-certs.sh DIR cert NAME SANS" >&2
  exit 2
  ;;
esac
