# Shared by the benchmarks: a private sshd on 127.0.0.1, as
# tests/e2e/fixtures/sshd.rs starts one: a free port, fresh ed25519 host and
# client keys, root login by key only, internal-sftp.
#
# Source it, then call `start_private_sshd DIR` (DIR must not exist). It needs
# `quiet` and `die` from bench/lib/common.sh and sets SSHD_DIR, HOST_KEY, KEY
# (the client key), KH (a known_hosts file for [127.0.0.1]:PORT), PORT,
# SSHD_PID and CONNECT (qemu+ssh://root@127.0.0.1:PORT/system). The caller
# kills SSHD_PID when done.

start_private_sshd() {
  SSHD_DIR="$1"
  mkdir -m 0700 "$SSHD_DIR"
  mkdir -p /run/sshd   # privilege separation directory; only the service unit makes it
  HOST_KEY="$SSHD_DIR/host_ed25519"
  KEY="$SSHD_DIR/client_ed25519"
  KH="$SSHD_DIR/known_hosts"
  quiet keygen-host ssh-keygen -q -t ed25519 -N '' -C vmstash-bench-host -f "$HOST_KEY"
  quiet keygen-client ssh-keygen -q -t ed25519 -N '' -C vmstash-bench-client -f "$KEY"
  cp -- "$KEY.pub" "$SSHD_DIR/authorized_keys"

  free_port() {
    perl -MIO::Socket::INET -e '
      my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 0,
        Proto => "tcp", Listen => 1) or die "bind 127.0.0.1:0: $!\n";
      print $s->sockport, "\n"'
  }
  banner_ok() { # port: the port answers with an SSH banner
    (exec 3<>"/dev/tcp/127.0.0.1/$1" && IFS= read -r -t 2 line <&3 && [[ "$line" == SSH-2.0-* ]]) 2>/dev/null
  }
  PORT=""
  for _attempt in 1 2 3 4 5; do
    port="$(free_port)"
    cat >"$SSHD_DIR/sshd_config" <<EOF
# Private sshd of one vmstash benchmark run.
Port $port
ListenAddress 127.0.0.1
AddressFamily inet
HostKey $HOST_KEY
PidFile $SSHD_DIR/sshd.pid
AuthorizedKeysFile $SSHD_DIR/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
LogLevel VERBOSE
Subsystem sftp internal-sftp
EOF
    /usr/sbin/sshd -D -e -f "$SSHD_DIR/sshd_config" </dev/null >"$SSHD_DIR/sshd.log" 2>&1 &
    SSHD_PID=$!
    for _ in $(seq 1 300); do
      kill -0 "$SSHD_PID" 2>/dev/null || break
      if banner_ok "$port"; then
        PORT="$port"
        break
      fi
      sleep 0.05
    done
    [ -z "$PORT" ] || break
    # Another process may have taken the port between probe and bind.
    kill "$SSHD_PID" 2>/dev/null || true
    wait "$SSHD_PID" 2>/dev/null || true
    SSHD_PID=""
  done
  [ -n "$PORT" ] || die "sshd did not start; its log:
  $(cat "$SSHD_DIR/sshd.log")"
  printf '[127.0.0.1]:%s %s\n' "$PORT" "$(cut -d' ' -f1,2 "$HOST_KEY.pub")" >"$KH"
  CONNECT="qemu+ssh://root@127.0.0.1:$PORT/system"
}

# ssh_vm_backup LABEL BIN REPO DOMAIN [ARGS...]: one `BIN -r REPO --json backup --connect
# $CONNECT --vm DOMAIN ARGS...` through the private sshd with the helper: see ssh_backup.
ssh_vm_backup() {
  local label="$1" bin="$2" repo="$3" dom="$4"
  shift 4
  ssh_backup "$label" "$bin" "$repo" "$CONNECT" --vm "$dom" "$@"
}

# ssh_backup LABEL BIN REPO URI [ARGS...]: one `BIN -r REPO --json backup --connect URI
# ARGS...` through the private sshd with the helper (dies if it fails or did not use the
# helper); its output in $LOGS/LABEL.out and .err. Sets B_MS (wall time), B_WIRE (bytes sent
# on lo meanwhile) and B_EXECS (SSH exec channels it opened).
ssh_backup() {
  local label="$1" bin="$2" repo="$3" uri="$4" log_before before after t0 t1
  shift 4
  log_before="$(wc -c <"$SSHD_DIR/sshd.log")"
  before="$(cat /sys/class/net/lo/statistics/tx_bytes)"
  t0="$(date +%s%N)"
  env -u SSH_AUTH_SOCK HOME="$W/home" "$bin" -r "$repo" --identity "$KEY" --known-hosts "$KH" \
    --json backup --connect "$uri" "$@" >"$LOGS/$label.out" 2>"$LOGS/$label.err" || {
    tail -n 20 "$LOGS/$label.err" >&2
    die "backup $label failed"
  }
  t1="$(date +%s%N)"
  after="$(cat /sys/class/net/lo/statistics/tx_bytes)"
  if grep -q "not using the hashblocks helper" "$LOGS/$label.err"; then
    die "backup $label did not use the helper: $(cat "$LOGS/$label.err")"
  fi
  B_MS=$(((t1 - t0) / 1000000))
  B_WIRE=$((after - before))
  B_EXECS="$(tail -c +"$((log_before + 1))" "$SSHD_DIR/sshd.log" | grep -c 'Starting session: command' || true)"
}
