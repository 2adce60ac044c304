#!/bin/sh
# Test PKI for the TLS tests, with openssl: tls_pki.sh DIR NAME
#   DIR/NAME/      ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem
#                  (nbdkit's and qemu's server layout, libnbd's and qemu's client layout),
#                  CA "NAME test CA", server for localhost and 127.0.0.1, client "CN=client1,O=disksynth"
#   DIR/NAME/expired/  server-cert.pem and client-cert.pem that ended in 2020 (with the same keys)
#                  and ca-cert.pem, made with `openssl ca -startdate/-enddate` (openssl 3.0's
#                  `x509 -req` has no -not_after and refuses negative -days).
set -eu
d="$1/$2"
mkdir -p "$d/expired" "$d/work"
cd "$d"
ec="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
openssl req -x509 $ec -keyout work/ca-key.pem -out ca-cert.pem -days 30 \
    -subj "/CN=$2 test CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n' > work/server.ext
printf 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n' > work/client.ext
openssl req $ec -keyout server-key.pem -out work/server.csr -subj /CN=localhost 2>/dev/null
openssl req $ec -keyout client-key.pem -out work/client.csr -subj /O=disksynth/CN=client1 2>/dev/null
for who in server client; do
    openssl x509 -req -in work/$who.csr -CA ca-cert.pem -CAkey work/ca-key.pem -CAcreateserial \
        -out $who-cert.pem -days 30 -extfile work/$who.ext 2>/dev/null
done
# The expired pair: `openssl ca` takes explicit dates.
: > work/index.txt
echo 1000 > work/serial
cat > work/ca.cnf <<CNF
[ca]
default_ca = test
[test]
database = $d/work/index.txt
new_certs_dir = $d/work
serial = $d/work/serial
default_md = sha256
policy = any
unique_subject = no
[any]
commonName = supplied
organizationName = optional
CNF
for who in server client; do
    openssl ca -batch -notext -config work/ca.cnf -cert ca-cert.pem -keyfile work/ca-key.pem \
        -in work/$who.csr -out expired/$who-cert.pem -extfile work/$who.ext \
        -startdate 20200101000000Z -enddate 20200102000000Z 2>/dev/null
    cp $who-key.pem expired/
done
cp ca-cert.pem expired/
