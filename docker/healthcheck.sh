#!/bin/sh
# Container health check (the image's HEALTHCHECK): GET /healthz on the local listener.
# Follows the service's own settings: HTTPS unless ENABLE_HTTPS is one of the false words the
# service accepts, DNSEXFIL_PORT (default 5000), DNSEXFIL_HOST when it is a specific address.
# --insecure: the certificate is self-signed or the operator's own, issued for a name other than
# 127.0.0.1; this checks that the service answers, not whom to trust.
set -eu

case "$(printf '%s' "${ENABLE_HTTPS:-true}" | tr '[:upper:]' '[:lower:]')" in
  false | f | no | n | off | 0) scheme=http ;;
  *) scheme=https ;;
esac

host=${DNSEXFIL_HOST:-0.0.0.0}
case "$host" in
  0.0.0.0 | :: | '[::]') host=127.0.0.1 ;;
  \[*) ;;
  *:*) host="[$host]" ;;
esac

# Docker reads exit status 1 as unhealthy and reserves 2, so curl's own codes are mapped to 1.
curl --fail --silent --show-error --insecure --max-time 4 --output /dev/null \
  "${scheme}://${host}:${DNSEXFIL_PORT:-5000}/healthz" || exit 1
