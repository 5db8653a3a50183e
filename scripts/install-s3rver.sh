#!/usr/bin/env bash
# Installs s3rver 3.x (a small S3-compatible server on Node.js) for the object-storage mirror tests
# (tests/checkpoint/s3_*_test.cpp). Idempotent. Needs node + npm (Debian: nodejs npm).
set -euo pipefail

if command -v s3rver >/dev/null 2>&1 && s3rver --version 2>/dev/null | grep -q '^3\.'; then
  echo "install-s3rver: s3rver $(s3rver --version) present"
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends nodejs npm
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-s3rver: npm install -g s3rver@3"
$SUDO npm install -g --no-audit --no-fund s3rver@3
echo "install-s3rver: s3rver $(s3rver --version) installed at $(command -v s3rver)"
