#!/usr/bin/env bash
# Makes the LUKS volumes that fuse/src/luks/tests.rs reads, into directory $1, from the
# plaintext files $2 and $3 (multiples of 4096 bytes; $3 holds no filesystem: cryptsetup
# refuses 4096-byte sectors over an ext4 of 1 KiB blocks), with cryptsetup's cheapest key derivations
# (about a second in all). There is no device-mapper here, so the data is encrypted by
# tools other than the code under test: LUKS2 volumes by `cryptsetup reencrypt --encrypt`
# (offline, cryptsetup's user-space crypto), the LUKS1 volume by Python's `cryptography`
# (OpenSSL) with the volume key `cryptsetup luksDump --dump-volume-key` gives.
#   luks1.img ($2)     LUKS1, aes-xts-plain64 256-bit, PBKDF2-SHA256, 1000 iterations;
#   luks1-cbc.img ($2) LUKS1, aes-cbc-essiv:sha256 256-bit, PBKDF2-SHA1 (the defaults of
#                      cryptsetup before 1.6), 1000 iterations;
#   luks2-pbkdf2.img ($2) LUKS2, aes-xts-plain64 512-bit, 512-byte sectors, label
#                      "vmstash-test", slot 0 PBKDF2-SHA256, slot 1 (second passphrase)
#                      PBKDF2-SHA1;
#   luks2-argon2id.img ($3) LUKS2, aes-xts-plain64 256-bit, 4096-byte sectors, Argon2id
#                      (4 passes, 32 KiB, 1 lane).
# Each NAME.img has NAME.key beside it: the volume key in hex, as cryptsetup dumps it.
# Passphrases: "vmstash-test-passphrase" (every volume), "second passphrase" (slot 1).
# Needs cryptsetup (cryptsetup-bin) and python3-cryptography.
set -euo pipefail
out=$1
plain=$2
plain_4k=$3
mkdir -p "$out"
printf 'vmstash-test-passphrase' >"$out/pass"
printf 'second passphrase' >"$out/pass2"

vkey() { # the volume key of $1, hex
    cryptsetup luksDump --batch-mode --dump-volume-key --key-file "$out/pass" "$1" |
        sed -n '/MK dump:/,$p' | sed 's/MK dump://' | tr -d ' \t\n'
}

encrypt2() { # NAME, PLAINTEXT, then cryptsetup options
    local img="$out/$1.img"
    cp "$2" "$img"
    shift 2
    truncate -s $(($(stat -c %s "$img") + (2 << 20))) "$img"
    cryptsetup reencrypt --encrypt --type luks2 --batch-mode --reduce-device-size 2M \
        --key-file "$out/pass" "$@" "$img" >/dev/null
}

encrypt2 luks2-pbkdf2 "$plain" --cipher aes-xts-plain64 --key-size 512 --sector-size 512 \
    --pbkdf pbkdf2 --hash sha256 --pbkdf-force-iterations 1000 --label vmstash-test
cryptsetup luksAddKey --batch-mode --key-file "$out/pass" --pbkdf pbkdf2 --hash sha1 \
    --pbkdf-force-iterations 1000 "$out/luks2-pbkdf2.img" "$out/pass2"
encrypt2 luks2-argon2id "$plain_4k" --cipher aes-xts-plain64 --key-size 256 --sector-size 4096 \
    --pbkdf argon2id --pbkdf-force-iterations 4 --pbkdf-memory 32 --pbkdf-parallel 1

luks1() { # NAME, then cryptsetup options: a LUKS1 volume, its data encrypted by OpenSSL
    local img="$out/$1.img"
    shift
    truncate -s $((4 << 20)) "$img"
    cryptsetup luksFormat --type luks1 --batch-mode --pbkdf-force-iterations 1000 \
        --key-file "$out/pass" "$@" "$img"
    vkey "$img" >"${img%.img}.key"
    python3 - "$img" "$plain" "${img%.img}.key" <<'PY'
import hashlib, sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
img, plain, keyfile = sys.argv[1:4]
key = bytes.fromhex(open(keyfile).read())
data = open(plain, 'rb').read()
with open(img, 'r+b') as f:
    head = f.read(592)
    mode = head[40:72].rstrip(b'\0').decode()
    payload = int.from_bytes(head[104:108], 'big') * 512
    essiv = Cipher(algorithms.AES(hashlib.sha256(key).digest()), modes.ECB()).encryptor()
    f.seek(payload)
    for n in range(len(data) // 512):
        number = n.to_bytes(16, 'little')
        if mode == 'xts-plain64':
            enc = Cipher(algorithms.AES(key), modes.XTS(number)).encryptor()
        elif mode == 'cbc-essiv:sha256':
            enc = Cipher(algorithms.AES(key), modes.CBC(essiv.update(number))).encryptor()
        else:
            sys.exit(f'make-luks.sh: no encryption for mode {mode}')
        f.write(enc.update(data[n * 512:(n + 1) * 512]) + enc.finalize())
    f.truncate(payload + len(data))
PY
}
luks1 luks1 --cipher aes-xts-plain64 --key-size 256 --hash sha256
luks1 luks1-cbc --cipher aes-cbc-essiv:sha256 --key-size 256 --hash sha1

for name in luks2-pbkdf2 luks2-argon2id; do vkey "$out/$name.img" >"$out/$name.key"; done
