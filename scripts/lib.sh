# Shared by the scripts: install what the build needs, build, find the binary.
# Sourced, not run.

repo_root() { cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd; }

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Installs Debian packages that are missing (needs root or sudo); a no-op when all are there.
ensure_packages() {
    local missing=()
    for package in "$@"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "missing packages (${missing[*]}) and no root or sudo to install them"
        sudo="sudo"
    fi
    say "installing ${missing[*]}"
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_build_dependencies() {
    command -v swift >/dev/null || die "Swift is not installed (https://www.swift.org/install/linux/)"
    # libcurl4: the http: executor (FoundationNetworking) loads it at run time.
    # libsqlite3-dev: the task store (GRDB over the system SQLite).
    # libssl-dev: SHA-256 with the CPU's SHA extensions (libcrypto), for audit digests and artifacts.
    ensure_packages libsodium-dev libsqlite3-dev libssl-dev pkg-config libcurl4
}

# Builds the agentmesh binary (debug unless CONFIGURATION=release) and prints its path.
build_agentmesh() {
    local configuration="${CONFIGURATION:-debug}"
    say "building agentmesh ($configuration)"
    swift build -c "$configuration" --product agentmesh >&2
    echo "$(swift build -c "$configuration" --show-bin-path)/agentmesh"
}
