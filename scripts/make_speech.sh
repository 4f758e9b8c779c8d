#!/usr/bin/env bash
# A folder of speech for `--data.data_dir`, made on this machine (nothing is downloaded):
#   scripts/make_speech.sh OUT_DIR        (or: make speech SPEECH_DIR=OUT_DIR)
# - espeak-ng (Debian: apt-get install espeak-ng) speaks the Harvard sentences (public domain) in
#   several voices, pitches and rates: OUT_DIR/espeak/<voice>/<n>.wav (22.05 kHz; the data loader
#   resamples);
# - the real recordings of a human speaker that Debian's alsa-utils ships in /usr/share/sounds/alsa
#   ("Front Left", ...; GPL-2 like the package), when present: OUT_DIR/alsa/*.wav.
set -euo pipefail
out=${1:?usage: scripts/make_speech.sh OUT_DIR}
command -v espeak-ng >/dev/null || { echo "make_speech.sh: espeak-ng not found (apt-get install espeak-ng)" >&2; exit 2; }

sentences=(
  "The birch canoe slid on the smooth planks."
  "Glue the sheet to the dark blue background."
  "It's easy to tell the depth of a well."
  "These days a chicken leg is a rare dish."
  "Rice is often served in round bowls."
  "The juice of lemons makes fine punch."
  "The box was thrown beside the parked truck."
  "The hogs were fed chopped corn and garbage."
  "Four hours of steady work faced us."
  "A large size in stockings is hard to sell."
  "The boy was there when the sun rose."
  "A rod is used to catch pink salmon."
  "The source of the huge river is the clear spring."
  "Kick the ball straight and follow through."
  "Help the woman get back to her feet."
  "A pot of tea helps to pass the evening."
  "Smoky fires lack flame and heat."
  "The soft cushion broke the man's fall."
  "The salt breeze came across from the sea."
  "The girl at the booth sold fifty bonds."
)
# voice  pitch(0-99)  words per minute
voices=(
  "en+m1 40 160" "en+m3 30 140" "en+f2 60 170" "en+f4 70 150"
  "en-us+m2 45 180" "en-us+f3 65 155" "en-gb-scotland+m4 35 145" "en-gb-x-rp+f1 55 165"
)
for spec in "${voices[@]}"; do
  read -r voice pitch rate <<<"$spec"
  dir="$out/espeak/${voice//+/_}"
  mkdir -p "$dir"
  for i in "${!sentences[@]}"; do
    espeak-ng -v "$voice" -p "$pitch" -s "$rate" -w "$dir/$(printf %02d "$i").wav" "${sentences[$i]}"
  done
done
if [ -d /usr/share/sounds/alsa ]; then
  mkdir -p "$out/alsa"
  for f in /usr/share/sounds/alsa/*.wav; do
    case "$(basename "$f")" in Noise.wav) ;; *) cp "$f" "$out/alsa/" ;; esac
  done
fi
echo "make_speech.sh: $(find "$out" -name '*.wav' | wc -l) files in $out"
