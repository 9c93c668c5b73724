#!/usr/bin/env bash
# Start the local PostgreSQL and Redis the tests talk to, when they are not running, and
# install promtool (tests/test_deploy.py unit-tests the alerts with it) when it is missing.
set -u
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if command -v pg_isready >/dev/null 2>&1; then
  if ! pg_up; then
    echo "starting PostgreSQL"
    for v in $(ls /etc/postgresql 2>/dev/null); do
      pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
    done
    for _ in $(seq 1 50); do pg_up && break; sleep 0.2; done
  fi
  pg_up && echo "PostgreSQL: up" || echo "PostgreSQL: NOT running (tests that need it will fail)"
fi
if command -v redis-server >/dev/null 2>&1; then
  if ! redis_up; then
    echo "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
    for _ in $(seq 1 50); do redis_up && break; sleep 0.2; done
  fi
  redis_up && echo "Redis: up" || echo "Redis: NOT running (tests that need it will fail)"
fi
if ! command -v promtool >/dev/null 2>&1; then
  # Debian's package "prometheus" ships promtool
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  if command -v apt-get >/dev/null 2>&1; then
    echo "installing promtool (apt-get install prometheus)"
    $SUDO apt-get install -y --no-install-recommends prometheus >/dev/null \
      || { $SUDO apt-get update -qq && $SUDO apt-get install -y --no-install-recommends prometheus >/dev/null; } \
      || true
  fi
fi
command -v promtool >/dev/null 2>&1 && echo "promtool: $(command -v promtool)" \
  || echo "promtool: NOT installed (tests/test_deploy.py's promtool tests will fail)"
exit 0
