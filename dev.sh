#!/usr/bin/env bash
# ringmta developer entry point; the README's two commands use it.
#   ./dev.sh run [ringmta args]   install packages, build (release), run in the foreground
#   ./dev.sh test                 install packages, build, run the whole ctest suite
#                                 (release build, then ASan+UBSan, then TSan)
#   ./dev.sh deps | build [preset]
set -euo pipefail
cd "$(dirname "$0")"

# Everything the build, the tests and the run need, from Debian 12's archive.
PKGS=(build-essential cmake pkg-config liburing-dev liblmdb-dev lmdb-utils libinih-dev
      libcmocka-dev libldns-dev libwolfssl-dev libcrypt-dev python3 swaks openssl iproute2
      util-linux
      unbound ldnsutils bind9-dnsutils)

deps() {
    local missing=()
    for p in "${PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "dev.sh: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build() {
    local preset=${1:-release}
    cmake --preset "$preset" >/dev/null
    cmake --build --preset "$preset" -j"$(nproc)"
}

case "${1:-}" in
deps) deps ;;
build) deps; build "${2:-release}" ;;
run)
    shift
    deps
    build release >/dev/null
    exec ./build/release/ringmta "$@"
    ;;
test)
    deps
    build release
    ctest --preset release -j2
    build dev
    # ASan+UBSan: the same suite, every test, under the sanitizers.
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
        ctest --preset dev -j2
    build tsan
    # ThreadSanitizer: a race makes the daemon exit non-zero, which fails its test.
    TSAN_OPTIONS=halt_on_error=1 ctest --preset tsan -j2
    ;;
*)
    sed -n '2,8p' "$0" >&2
    exit 2
    ;;
esac
