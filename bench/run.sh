#!/usr/bin/env bash
# Benchmark of the runner's disk engine against the same steps chained with standalone tools, in the
# same run, on the same machine, against the same loopback servers (own s3s-fs and nginx WebDAV).
#
#   engine: as the pipeline stages a disk: the image as it is when the formats match, the runner's
#           streamOptimized writer streamed into Stage::upload_body (no scratch copy), else
#           runner::disk::convert into scratch -> Stage::upload (SHA-256 in the reading pass)
#           -> Stage::download (SHA-256 in the writing pass, compared with the recorded one)
#   tools:  qemu-img convert (same options) -> sha256sum -> upload (aws s3 cp | curl -T)
#           -> download (aws s3 cp | curl) -> sha256sum -> compare
#
#   bare:   curl -T then curl -o of the same bytes (no hash, no check): the floor for qcow2->qcow2
#
# Figures (one line each): wall time of both and the ratio (target <= 0.3) for qcow2->qcow2 via HTTP
# and qcow2->vmdk via S3 on a 4 GiB-virtual qcow2 holding 2 GiB of random data, and qcow2->qcow2
# against the bare transfers (target <= 1.25); scratch bytes written before the upload (target 0
# where streaming applies) and for the import; the engine's peak RSS
# (target <= 128 MiB) at 1 GiB and 16 GiB virtual size; bytes staged / allocated data (target <= 1.05);
# the streamOptimized writer against qemu-img's (VRG_VMDK_WRITER=qemu-img) on the benchmark image and
# on a compressible one (text and zeros): conversion time (target: at least 5x faster) and output size
# (target: at most 1.1x qemu-img's).
#
# Environment: VRG_CACHE (default ~/.cache/virtrigaud; test images are cached in $VRG_CACHE/bench),
# VRG_BENCH_DIR (work directory, default $VRG_CACHE/bench), VRG_BENCH_16G=0 skips the 16 GiB case,
# VRG_BENCH_ONLY=vmdk runs only the streamOptimized figures.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VRG_CACHE=${VRG_CACHE:-$HOME/.cache/virtrigaud}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$VRG_CACHE/target}
W=${VRG_BENCH_DIR:-$VRG_CACHE/bench}
S3S_FS=$VRG_CACHE/bin/s3s-fs
GIB=$((1 << 30))
MIB=$((1 << 20))

say() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------------
# tools
# ---------------------------------------------------------------------------------------------------
need_tools() {
  command -v qemu-img >/dev/null || die "qemu-img missing: run e2e/scripts/install-deps.sh (Debian qemu-utils)"
  nginx -V 2>&1 | grep -q http_dav_module || die "nginx with WebDAV missing: apt-get install -y nginx-full"
  [ -x "$S3S_FS" ] || die "s3s-fs missing: cargo install s3s-fs@0.14.1 --features binary --root $VRG_CACHE"
  [ -x /usr/bin/time ] || die "/usr/bin/time missing: apt-get install -y time"
  command -v curl >/dev/null || die "curl missing: apt-get install -y curl"
  command -v sha256sum >/dev/null || die "sha256sum (coreutils) missing"
  if ! command -v aws >/dev/null || ! aws --version >/dev/null 2>&1; then
    say "installing the AWS CLI from PyPI"
    python3 -m pip install --quiet awscli || die "pip install awscli failed"
  fi
}

build_engine() {
  say "building the engine (release)"
  (cd "$ROOT" && cargo build --release -q -p runner --example bench_engine)
  ENGINE=$CARGO_TARGET_DIR/release/examples/bench_engine
}

# ---------------------------------------------------------------------------------------------------
# images: <virt GiB> virtual, <data MiB> of random data in 64 MiB extents spread over the disk
# ---------------------------------------------------------------------------------------------------
make_image() { # name virt_gib data_mib
  local name=$1 virt=$2 data=$3 img=$W/images/$1.qcow2
  if [ -f "$img" ]; then echo "$img"; return; fi
  mkdir -p "$W/images"
  say "creating $name: ${virt} GiB virtual, ${data} MiB random data"
  local raw=$W/images/$name.raw extents=$((data / 64)) i stride
  rm -f "$raw"; truncate -s "$((virt * GIB))" "$raw"
  stride=$(( (virt * GIB / (64 * MIB)) / extents ))
  for ((i = 0; i < extents; i++)); do
    dd if=/dev/urandom of="$raw" bs=64M count=1 seek=$((i * stride)) conv=notrunc status=none iflag=fullblock
  done
  qemu-img convert -f raw -O qcow2 "$raw" "$img.tmp"
  rm -f "$raw"
  mv "$img.tmp" "$img"
  echo "$img"
}

make_text_image() { # name virt_gib text_mib: text-like data (compressible) in 64 MiB extents, zeros between
  local name=$1 virt=$2 data=$3 img=$W/images/$1.qcow2
  if [ -f "$img" ]; then echo "$img"; return; fi
  mkdir -p "$W/images"
  say "creating $name: ${virt} GiB virtual, ${data} MiB of text"
  python3 - "$W/images/$name.raw" "$virt" "$data" <<'PY'
import sys
path, virt, data = sys.argv[1], int(sys.argv[2]) << 30, int(sys.argv[3]) << 20
extent = 64 << 20
stride = virt // (data // extent)
with open(path, "wb") as f:
    f.truncate(virt)
    for i in range(data // extent):
        f.seek(i * stride)
        out, n = bytearray(), 0
        while len(out) < extent:
            out += b"%08d virtrigaud migrates vm-%04d between hypervisors, disk %d of %d: ok\n" % (n, n % 997, i, n % 13)
            n += 1
        f.write(out[:extent])
PY
  qemu-img convert -f raw -O qcow2 "$W/images/$name.raw" "$img.tmp"
  rm -f "$W/images/$name.raw"
  mv "$img.tmp" "$img"
  echo "$img"
}

allocated_bytes() { # qcow2 -> bytes of guest data it holds
  qemu-img map --output=json -f qcow2 "$1" | python3 -c \
    'import json,sys; print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]))'
}

# ---------------------------------------------------------------------------------------------------
# servers (own instances on free loopback ports)
# ---------------------------------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { local i; for ((i = 0; i < 100; i++)); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

PIDS=()
cleanup() { local p; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

start_servers() {
  rm -rf "$W/srv"; mkdir -p "$W/srv/s3/bench" "$W/srv/www" "$W/srv/nginx/tmp" "$W/creds-s3" "$W/creds-http"
  S3_PORT=$(free_port); HTTP_PORT=$(free_port)
  S3_AK=bench-access-key; S3_SK=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
  TOKEN=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')

  RUST_LOG=warn "$S3S_FS" --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_AK" --secret-key "$S3_SK" \
    "$W/srv/s3" >"$W/srv/s3s-fs.log" 2>&1 &
  PIDS+=($!)
  wait_port "$S3_PORT" || die "s3s-fs did not start: $(cat "$W/srv/s3s-fs.log")"

  cat >"$W/srv/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
user root;
worker_processes 1;
pid $W/srv/nginx/nginx.pid;
error_log $W/srv/nginx/error.log warn;
events { worker_connections 64; }
http {
    default_type application/octet-stream;
    access_log off;
    client_body_temp_path $W/srv/nginx/tmp/body;
    proxy_temp_path $W/srv/nginx/tmp/proxy;
    fastcgi_temp_path $W/srv/nginx/tmp/fastcgi;
    uwsgi_temp_path $W/srv/nginx/tmp/uwsgi;
    scgi_temp_path $W/srv/nginx/tmp/scgi;
    client_max_body_size 0;
    client_body_buffer_size 1m;
    sendfile on;
    map \$http_authorization \$ok { default 0; "Bearer $TOKEN" 1; }
    server {
        listen 127.0.0.1:$HTTP_PORT;
        root $W/srv/www;
        location / {
            if (\$ok = 0) { return 401; }
            dav_methods PUT DELETE MKCOL;
            create_full_put_path on;
        }
    }
}
EOF
  nginx -p "$W/srv/nginx" -c "$W/srv/nginx/nginx.conf" -e "$W/srv/nginx/error.log" &
  PIDS+=($!)
  wait_port "$HTTP_PORT" || die "nginx did not start: $(cat "$W/srv/nginx/error.log")"

  printf '%s' "$S3_AK" >"$W/creds-s3/storage.accessKey"
  printf '%s' "$S3_SK" >"$W/creds-s3/storage.secretKey"
  printf 'http://127.0.0.1:%s' "$S3_PORT" >"$W/creds-s3/storage.endpoint"
  printf '%s' "$TOKEN" >"$W/creds-http/storage.token"
  chmod 600 "$W"/creds-*/*

  cat >"$W/aws.config" <<EOF
[default]
region = us-east-1
request_checksum_calculation = when_required
response_checksum_validation = when_required
s3 =
    addressing_style = path
EOF
}

aws_s3() {
  AWS_CONFIG_FILE=$W/aws.config AWS_SHARED_CREDENTIALS_FILE=/dev/null \
    AWS_ACCESS_KEY_ID=$S3_AK AWS_SECRET_ACCESS_KEY=$S3_SK \
    aws --endpoint-url "http://127.0.0.1:$S3_PORT" s3 "$@" --only-show-errors
}

# ---------------------------------------------------------------------------------------------------
# the two contenders
# ---------------------------------------------------------------------------------------------------
now() { date +%s.%N; }
# Same start for every contender: the source in the page cache, no dirty pages of an earlier run
# still being written back (the disk here sustains ~240 MB/s; writeback would slow whoever is next).
settle() { cat "$1" >/dev/null; sync; }
elapsed() { python3 -c "print(f'{$2 - $1:.3f}')"; }

# qemu-img options as the engine's disk.rs uses them, so the comparison is about everything else
convert_opts() { case $1 in vmdk) echo "-o subformat=streamOptimized";; qcow2) echo "-m 16";; *) echo "-m 16 -W";; esac; }

tools_run() { # storage src fmt -> seconds on stdout; steps on stderr
  local storage=$1 src=$2 fmt=$3
  local out=$W/tools/converted.$fmt back=$W/tools/fetched.$fmt key=bench/tools/vda.$fmt
  rm -rf "$W/tools"; mkdir -p "$W/tools"
  settle "$src"
  local t0 t1 t2 t3 t4 t5 sum1 sum2
  t0=$(now)
  # shellcheck disable=SC2046
  qemu-img convert -f qcow2 -O "$fmt" $(convert_opts "$fmt") "$src" "$out"
  t1=$(now)
  sum1=$(sha256sum "$out" | cut -d' ' -f1)
  t2=$(now)
  if [ "$storage" = s3 ]; then
    aws_s3 cp "$out" "s3://bench/$key"
  else
    curl -sSf -o /dev/null -H "Authorization: Bearer $TOKEN" -T "$out" "http://127.0.0.1:$HTTP_PORT/$key"
  fi
  t3=$(now)
  if [ "$storage" = s3 ]; then
    aws_s3 cp "s3://bench/$key" "$back"
  else
    curl -sSf -H "Authorization: Bearer $TOKEN" -o "$back" "http://127.0.0.1:$HTTP_PORT/$key"
  fi
  t4=$(now)
  sum2=$(sha256sum "$back" | cut -d' ' -f1)
  [ "$sum1" = "$sum2" ] || die "tools: checksum mismatch after the round trip"
  t5=$(now)
  say "  tools: convert $(elapsed "$t0" "$t1")s, sha256sum $(elapsed "$t1" "$t2")s, upload $(elapsed "$t2" "$t3")s, download $(elapsed "$t3" "$t4")s, sha256sum $(elapsed "$t4" "$t5")s"
  if [ "$storage" = s3 ]; then aws_s3 rm "s3://bench/$key"; else
    curl -sSf -o /dev/null -X DELETE -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$HTTP_PORT/$key"; fi
  rm -rf "$W/tools"
  elapsed "$t0" "$t5"
}

engine_run() { # storage src fmt -> the engine's JSON line on stdout; /usr/bin/time's peak RSS in $W/time.txt
  local storage=$1 src=$2 fmt=$3 endpoint creds
  if [ "$storage" = s3 ]; then endpoint=127.0.0.1:$S3_PORT; creds=$W/creds-s3
  else endpoint=http://127.0.0.1:$HTTP_PORT; creds=$W/creds-http; fi
  settle "$src"
  /usr/bin/time -v -o "$W/time.txt" "$ENGINE" --src "$src" --src-format qcow2 --format "$fmt" \
    --storage "$storage" --endpoint "$endpoint" --bucket bench --credentials "$creds" \
    --work "$W/engine" --key "bench/engine/vda.$fmt"
}

bare_run() { # src -> seconds of a bare upload plus a bare download of the same bytes (curl, no hash)
  local src=$1 key=bench/bare/vda t0 t1 t2
  rm -rf "$W/bare"; mkdir -p "$W/bare"
  settle "$src"
  t0=$(now)
  curl -sSf -o /dev/null -H "Authorization: Bearer $TOKEN" -T "$src" "http://127.0.0.1:$HTTP_PORT/$key"
  t1=$(now)
  curl -sSf -H "Authorization: Bearer $TOKEN" -o "$W/bare/fetched" "http://127.0.0.1:$HTTP_PORT/$key"
  t2=$(now)
  say "  bare: upload $(elapsed "$t0" "$t1")s, download $(elapsed "$t1" "$t2")s"
  curl -sSf -o /dev/null -X DELETE -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$HTTP_PORT/$key"
  rm -rf "$W/bare"
  elapsed "$t0" "$t2"
}

convert_run() { # src fmt -> the engine's --convert-only JSON line
  settle "$1"
  "$ENGINE" --src "$1" --src-format qcow2 --format "$2" --storage http --endpoint "http://127.0.0.1:$HTTP_PORT" \
    --credentials "$W/creds-http" --work "$W/engine" --key unused --convert-only
}

json() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
verdict() { python3 -c "print('met' if $1 else 'NOT met')"; }
time_rss_mib() { awk -F: '/Maximum resident set size/ {printf "%.0f", $2/1024}' "$W/time.txt"; }

LINES=()
compare() { # label storage src fmt
  local label=$1 storage=$2 src=$3 fmt=$4 tools engine_json engine ratio staged alloc bare
  say "$label"
  tools=$(tools_run "$storage" "$src" "$fmt")
  engine_json=$(engine_run "$storage" "$src" "$fmt")
  engine=$(json "$engine_json" total_s)
  say "  engine: convert $(json "$engine_json" convert_s)s, upload+hash $(json "$engine_json" upload_s)s (conversion streamed into it: $(json "$engine_json" streamed)), download+hash+verify $(json "$engine_json" download_s)s; peak RSS $(( $(json "$engine_json" peak_rss_kib) / 1024 )) MiB (with qemu-img: $(time_rss_mib) MiB)"
  ratio=$(python3 -c "print(f'{$engine / $tools:.2f}')")
  LINES+=("$label: runner ${engine}s, tools ${tools}s, ratio $ratio (target <= 0.3: $(verdict "$ratio <= 0.3"))")
  if [ "$storage" = http ] && [ "$fmt" = qcow2 ]; then
    bare=$(bare_run "$src")
    ratio=$(python3 -c "print(f'{$engine / $bare:.2f}')")
    LINES+=("$label against the bare upload + download of the same bytes: runner ${engine}s, bare ${bare}s, ratio $ratio (target <= 1.25: $(verdict "$ratio <= 1.25"))")
  fi
  staged=$(json "$engine_json" staged_bytes); alloc=$(allocated_bytes "$src")
  ratio=$(python3 -c "print(f'{$staged / $alloc:.3f}')")
  LINES+=("bytes staged $label: $staged of $alloc allocated, ratio $ratio (target <= 1.05: $(verdict "$ratio <= 1.05"))")
  LINES+=("scratch $label: $(json "$engine_json" scratch_upload_bytes) bytes before the upload (target where streaming applies: 0: $(verdict "$(json "$engine_json" scratch_upload_bytes) == 0")), $(json "$engine_json" scratch_download_bytes) bytes downloaded for the import")
}

rss_case() { # label src
  local label=$1 src=$2 engine_json own
  say "peak RSS at $label (qcow2->qcow2 via s3: multipart upload and ranged download)"
  engine_json=$(engine_run s3 "$src" qcow2)
  own=$(( $(json "$engine_json" peak_rss_kib) / 1024 ))
  LINES+=("peak RSS $label: $own MiB (target <= 128: $(verdict "$own <= 128")); with qemu-img child $(time_rss_mib) MiB; $(json "$engine_json" total_s)s")
}

vmdk_case() { # label src: the runner's streamOptimized writer vs qemu-img's, conversion alone
  local label=$1 src=$2 ours qemu speed size
  say "streamOptimized writer on $label"
  ours=$(convert_run "$src" vmdk)
  qemu=$(VRG_VMDK_WRITER=qemu-img convert_run "$src" vmdk)
  speed=$(python3 -c "print(f'{$(json "$qemu" convert_s) / max($(json "$ours" convert_s), 0.001):.1f}')")
  size=$(python3 -c "print(f'{$(json "$ours" bytes) / $(json "$qemu" bytes):.3f}')")
  LINES+=("streamOptimized $label: runner's writer $(json "$ours" convert_s)s, qemu-img $(json "$qemu" convert_s)s: ${speed}x faster (target >= 5: $(verdict "$speed >= 5")); output $(json "$ours" bytes) vs $(json "$qemu" bytes) bytes, ratio $size (target <= 1.1: $(verdict "$size <= 1.1"))")
}

# ---------------------------------------------------------------------------------------------------
mkdir -p "$W"
need_tools
build_engine
IMG4=$(make_image bench-4g 4 2048)
if [ "${VRG_BENCH_ONLY:-}" != vmdk ]; then
  IMG1=$(make_image bench-1g 1 512)
  [ "${VRG_BENCH_16G:-1}" = 0 ] || IMG16=$(make_image bench-16g 16 4096)
fi
IMGT=$(make_text_image bench-text-1g 1 512)
start_servers

vmdk_case "the benchmark image (2 GiB random)" "$IMG4"
vmdk_case "a compressible image (512 MiB text)" "$IMGT"
if [ "${VRG_BENCH_ONLY:-}" = vmdk ]; then printf '%s\n' "${LINES[@]}"; exit 0; fi
compare "qcow2->qcow2 via http" http "$IMG4" qcow2
compare "qcow2->vmdk via s3" s3 "$IMG4" vmdk
rss_case "1GiB" "$IMG1"
[ -z "${IMG16:-}" ] || rss_case "16GiB" "$IMG16"

printf '%s\n' "${LINES[@]}"
