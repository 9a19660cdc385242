#!/usr/bin/env bash
# Builds tests/fuzz/envelope_fuzz.cpp with clang's libFuzzer (+ ASan, UBSan)
# and runs it for a bounded time: ctest's `fuzz_envelope`.
#   run_fuzz.sh SOURCE_DIR WORK_DIR SECONDS
set -euo pipefail
SRC=$1
WORK=$2
SECONDS_TO_RUN=${3:-30}
CXX=${FUZZ_CXX:-clang++}
command -v "$CXX" >/dev/null || {
  echo "fuzz: $CXX not found (Debian packages clang and libclang-rt-14-dev; scripts/install-deps.sh installs them)" >&2
  exit 1
}
mkdir -p "$WORK/corpus"
bin=$WORK/envelope_fuzz
"$CXX" -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I"$SRC/host/include" -I"$SRC/host/src" -I"$SRC/sdk/include" \
  "$SRC/tests/fuzz/envelope_fuzz.cpp" "$SRC/host/src/envelope.cpp" "$SRC/host/src/signing.cpp" "$SRC/host/src/crypt.cpp" \
  "$SRC/host/src/message.cpp" "$SRC/host/src/message_reader.cpp" -lcrypto -o "$bin"
# Seeds: a sealed ping, a sealed reply, an unsigned header, garbage.
printf '\001{"toNode":"ship1","fromNode":"central","method":"cli_command","methodArgs":["true"],"id":"01ABC","sentAt":1}' >"$WORK/corpus/sealed-request"
printf '\001{"toNode":"ship1","fromNode":"central","method":"none","isReply":true,"inReplyTo":"x","seq":1,"final":false,"status":"ok"}' >"$WORK/corpus/sealed-reply"
printf '\000BSN1 central 1700000000000 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= AAAA\n{}' >"$WORK/corpus/header"
printf '\000\377\376garbage' >"$WORK/corpus/garbage"
cd "$WORK"
"$bin" -max_total_time="$SECONDS_TO_RUN" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 corpus
