# Sourced by tests/run and .ci/run: where a clone's builds and tools are
# kept between runs, outside the clone.
#
# `cache` is the directory (KEEL_CACHE_DIR, else ~/.cache/keel). Unless
# CARGO_TARGET_DIR is set, the debug, test and clippy builds go to a
# target directory there, named by the toolchain, the lock file and the
# clone's path: a fresh clone in the same place compiles only the
# workspace's own crates (each of its files is newer than what is there),
# where it compiled some 300 dependencies three times (clippy's check, the
# binary, the tests with their features). The path is in the name because
# cargo judges a crate built by its files' times: a tree edited before
# another tree's build into the same directory would look built. Others
# unused for two days go; past 12 GB, this one starts again.
cache="${KEEL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/keel}"
if [[ -z ${CARGO_TARGET_DIR:-} ]]; then
  keel_target_key=$({ rustc -vV; cat Cargo.lock; pwd -P; } | sha256sum | cut -c1-16)
  CARGO_TARGET_DIR="$cache/target-$keel_target_key"
  mkdir -p "$cache"
  find "$cache" -maxdepth 1 -name 'target-*' ! -name "target-$keel_target_key" -mtime +1 \
    -exec rm -rf {} +
  if [[ -d $CARGO_TARGET_DIR ]] && (($(du -sm "$CARGO_TARGET_DIR" | cut -f1) > 12288)); then
    rm -rf "$CARGO_TARGET_DIR"
  fi
  mkdir -p "$CARGO_TARGET_DIR"
  touch "$CARGO_TARGET_DIR"
  export CARGO_TARGET_DIR
fi
