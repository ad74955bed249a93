#!/usr/bin/env bash
# Installs the system tools the test suite uses, if missing, from Debian's packages:
# curl (a real HTTP client), nginx (the benchmarks' reference server) and wrk (load).
set -euo pipefail
need=()
command -v curl >/dev/null || need+=(curl)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
