#!/bin/sh
# Makes a small PKI for the certificate tests with the real openssl CLI:
#   root.pem            self-signed root CA
#   intermediate.pem    CA issued by the root
#   leaf.pem/.key       code-signing leaf issued by the intermediate (ed25519)
#   leaf-rsa.pem/.key   the same with an RSA key
#   leaf-server.pem/.key  extended key usage serverAuth only
#   leaf-keyenc.pem/.key  key usage keyEncipherment only (no digital signatures)
#   leaf-short.pem/.key   code-signing leaf valid for one day
#   sub-leaf.pem/.key     a code-signing certificate issued by leaf.pem (not a CA)
#   other-root.pem, other-leaf.pem/.key  a second, unrelated PKI
# Usage: make-pki.sh DIR
set -eu
d=$1
mkdir -p "$d"
cd "$d"
cat > ext.cnf <<'CNF'
[ca]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[code]
basicConstraints = CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = codeSigning
[server]
basicConstraints = CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
[keyenc]
basicConstraints = CA:false
keyUsage = critical, keyEncipherment
extendedKeyUsage = codeSigning
CNF
key() { openssl genpkey -algorithm "$1" ${2:+-pkeyopt "$2"} -out "$3" 2>/dev/null; }
selfsigned() { # name subject
    key ed25519 "" "$1.key"
    openssl req -x509 -new -key "$1.key" -subj "$2" -days 3650 \
        -addext "basicConstraints=critical,CA:true" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$1.pem"
}
issue() { # name subject issuer section days [alg opt]
    key "${6:-ed25519}" "${7:-}" "$1.key"
    openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
    openssl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -CAcreateserial \
        -days "$5" -extfile ext.cnf -extensions "$4" -out "$1.pem" 2>/dev/null
}
selfsigned root "/O=sifrun test/CN=Test Root CA"
issue intermediate "/O=sifrun test/CN=Test Intermediate CA" root ca 3650
issue leaf "/O=sifrun test/CN=Image Signer" intermediate code 3650
issue leaf-rsa "/O=sifrun test/CN=Image Signer RSA" intermediate code 3650 RSA rsa_keygen_bits:2048
issue leaf-server "/O=sifrun test/CN=Web Server" intermediate server 3650
issue leaf-keyenc "/O=sifrun test/CN=Encryption Only" intermediate keyenc 3650
issue leaf-short "/O=sifrun test/CN=Short Lived Signer" intermediate code 1
issue sub-leaf "/O=sifrun test/CN=Issued By A Leaf" leaf code 3650
selfsigned other-root "/O=elsewhere/CN=Other Root CA"
issue other-leaf "/O=elsewhere/CN=Other Signer" other-root code 3650
rm -f ./*.csr ./*.srl
