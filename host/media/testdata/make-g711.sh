#!/bin/sh
# Regenerates the G.711 reference vectors that `src/g711.rs` tests against (needs sox and perl).
#
# g711-input.s16: 16384 signed 16-bit little-endian samples, one in each 4-sample step of the
#   i16 range (so every 14-bit µ-law input and every 13-bit A-law input occurs), with the low two
#   bits varying: sample i = -32768 + 4*i + (i % 4). The test builds the same input itself.
# g711-encode.ul / g711-encode.al: that input encoded by sox, one byte per sample.
# g711-decode-ulaw.s16 / g711-decode-alaw.s16: the 256 codes 0..=255 decoded by sox to signed
#   16-bit little-endian samples.
#
# -D turns off sox's dither, which it otherwise adds when it lowers the precision (16 → 14/13 bits);
# without it the encoded vectors would be noisy rather than the plain G.711 mapping.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

perl -e 'print pack("s<*", map { -32768 + 4 * $_ + ($_ % 4) } 0 .. 16383)' > "$tmp/in.s16"
perl -e 'print pack("C*", 0 .. 255)' > "$tmp/codes.bin"

raw16='-t raw -r 8000 -e signed -b 16 -c 1 -L'
sox -D $raw16 "$tmp/in.s16" -t raw -r 8000 -c 1 -e u-law -b 8 g711-encode.ul
sox -D $raw16 "$tmp/in.s16" -t raw -r 8000 -c 1 -e a-law -b 8 g711-encode.al
sox -D -t raw -r 8000 -c 1 -e u-law -b 8 "$tmp/codes.bin" $raw16 g711-decode-ulaw.s16
sox -D -t raw -r 8000 -c 1 -e a-law -b 8 "$tmp/codes.bin" $raw16 g711-decode-alaw.s16
ls -l g711-encode.ul g711-encode.al g711-decode-ulaw.s16 g711-decode-alaw.s16
