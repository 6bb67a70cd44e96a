#!/usr/bin/env bash
# System packages the project needs: Java 17+ and Maven (the Kafka broker from Maven
# Central), Debian's redis-server, and Python's venv module. Installs only what is
# missing; needs root (or sudo) for apt-get.
set -euo pipefail
missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
# keytool makes the test broker's TLS certificate (deploy/localstack.py)
command -v keytool >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
# openssl makes the client certificate of the test broker's mutual-TLS listener
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || missing+=(python3-venv)
# validates deploy/compose.yaml without a Docker engine (tests/integration/test_deploy.py)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
# the Prometheus server `make run` and tests/e2e/test_prometheus.py start, and promtool,
# which checks and unit-tests the alert rules (deploy/prometheus); one Debian package
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || missing+=(prometheus)
# the browser test of the web pages (tests/e2e/test_browser.py)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
# the official AsyncAPI parser checks schemas/asyncapi.yaml (deploy/tools, from npm)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# `make bench` only (install-system.sh bench): javac compiles its Kafka Streams peer
if [ "${1:-}" = bench ]; then
  command -v javac >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing system packages: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
