# Sourced by the *-down.sh scripts of the e2e world (needs PIDS and a `say` function):
#
#   stop NAME EXE   TERM the pid in $PIDS/NAME.pid if it is still EXE (never by name: a reused pid is
#                   left alone), wait up to 10 s, then KILL; the pid file goes either way.
stop() {
  local name=$1 exe=$2 f=$PIDS/$1.pid pid i
  if [ ! -s "$f" ]; then say "$name: not running (no pid file)"; return 0; fi
  pid=$(tr -dc 0-9 <"$f")
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
    say "$name: not running (stale pid file)"; rm -f "$f"; return 0
  fi
  if [ "$(basename "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" | sed 's/ (deleted)$//')" != "$exe" ]; then
    say "$name: pid $pid is not $exe any more, leaving it alone"; rm -f "$f"; return 0
  fi
  kill -TERM "$pid"
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    say "$name: killed (pid $pid did not stop on TERM within 10 s)"
  else
    say "$name: stopped (pid $pid)"
  fi
  rm -f "$f"
}
