#!/usr/bin/env bash
# make demo: the whole job on a fresh machine, with a local KMS emulator.
# Starts moto_server on 127.0.0.1 (signature checking on), makes a KMS key,
# encrypts two sample secrets the way people do today, mounts them with
# kmsfs, reads one as an allowed user and is refused as another, then
# unmounts and stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
KMSFS=${KMSFS:-$PWD/.build/release/kmsfs}
work=$(mktemp -d /tmp/kmsfs-demo.XXXXXX)
chmod 755 "$work"   # the allowed user must be able to reach the mountpoint
moto_pid=""
demo_user=kmsfs-demo

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
    set +e
    if grep -q " $work/secrets " /proc/mounts 2>/dev/null; then fusermount3 -uz "$work/secrets"; fi
    [ -n "$moto_pid" ] && kill "$moto_pid" 2>/dev/null && wait "$moto_pid" 2>/dev/null
    id "$demo_user" >/dev/null 2>&1 && userdel "$demo_user" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
say "Starting a local KMS emulator (moto) on 127.0.0.1:$port, signatures checked"
INITIAL_NO_AUTH_ACTION_COUNT=3 moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done

export AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1 AWS_ENDPOINT_URL=http://127.0.0.1:$port
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/nonexistent AWS_SHARED_CREDENTIALS_FILE=/nonexistent
# Bootstrap (the emulator's first three calls go unsigned): an IAM user and its key.
AWS_ACCESS_KEY_ID=bootstrap AWS_SECRET_ACCESS_KEY=bootstrap aws iam create-user --user-name demo >/dev/null
AWS_ACCESS_KEY_ID=bootstrap AWS_SECRET_ACCESS_KEY=bootstrap aws iam put-user-policy --user-name demo --policy-name kms \
    --policy-document '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*"}]}'
read -r AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY < <(AWS_ACCESS_KEY_ID=bootstrap AWS_SECRET_ACCESS_KEY=bootstrap \
    aws iam create-access-key --user-name demo --query 'AccessKey.[AccessKeyId,SecretAccessKey]' --output text)
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
key=$(aws kms create-key --description "kmsfs demo" --query KeyMetadata.KeyId --output text)
echo "KMS key: $key"

say "Encrypting sample secrets the way boot scripts do today"
mkdir -p "$work/plain" "$work/encrypted/db" "$work/secrets"
printf -- '-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7demo\n-----END PRIVATE KEY-----\n' >"$work/plain/ssl.pem"
printf 's3cr3t-db-password\n' >"$work/plain/password"
aws kms encrypt --key-id "$key" --plaintext "fileb://$work/plain/ssl.pem" --query CiphertextBlob --output text \
    | base64 --decode >"$work/encrypted/ssl.pem.encrypted"
aws kms encrypt --key-id "$key" --plaintext "fileb://$work/plain/password" --query CiphertextBlob --output text \
    | base64 --decode >"$work/encrypted/db/password.encrypted"
rm -rf "$work/plain"
echo "\$ find $work/encrypted -type f"; find "$work/encrypted" -type f

id "$demo_user" >/dev/null 2>&1 || useradd --no-create-home --shell /usr/sbin/nologin --user-group "$demo_user"
say "Mounting: kmsfs $work/encrypted $work/secrets -o allow_uid=$demo_user"
"$KMSFS" "$work/encrypted" "$work/secrets" -o "allow_uid=$demo_user,log=$work/kmsfs.log"
echo "\$ ls -lR $work/secrets"; ls -lR "$work/secrets"

say "Reading as $demo_user (allowed): decrypted through KMS on first open"
setpriv --reuid "$demo_user" --regid "$demo_user" --init-groups cat "$work/secrets/ssl.pem"
setpriv --reuid "$demo_user" --regid "$demo_user" --init-groups cat "$work/secrets/db/password"

say "Reading as nobody (not allowed): refused, nothing decrypted"
if setpriv --reuid nobody --regid nogroup --clear-groups cat "$work/secrets/ssl.pem"; then
    echo "unexpected: nobody could read the secret" >&2; exit 1
fi

say "The audit trail (no plaintext in it)"
# Records are written by the daemon's audit thread within some 20 ms.
for _ in $(seq 50); do grep -q "result=denied" "$work/kmsfs.log" && break; sleep 0.1; done
grep audit "$work/kmsfs.log" | sed 's/^kmsfs: [a-z]*: //'

say "Unmounting; the daemon wipes every cached plaintext"
fusermount3 -u "$work/secrets"
for _ in $(seq 50); do grep -q "wiping" "$work/kmsfs.log" && break; sleep 0.1; done
tail -n 1 "$work/kmsfs.log"
say "Done: everything the demo started is stopped and removed"
