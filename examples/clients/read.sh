#!/bin/sh
# Reads a secret key, a parameter and a whole path from sidekey with curl.
#   SIDEKEY_URL (default http://127.0.0.1:2773), token from SIDEKEY_TOKEN or AWS_TOKEN.
set -eu
url="${SIDEKEY_URL:-http://127.0.0.1:2773}"
token="${SIDEKEY_TOKEN:-${AWS_TOKEN:-}}"
get() { curl -fsS -H "X-Aws-Parameters-Secrets-Token: $token" "$url$1"; }

echo "secret: $(get '/secret?id=demo/db:password&raw=true')"
echo "parameter: $(get '/parameter?name=/demo/app/url&raw=true')"
# PSLE route, as existing Lambda code calls it (the name is URL-encoded).
echo "psle: $(get '/systemsmanager/parameters/get?name=%2Fdemo%2Fapp%2Furl' | sed -n 's/.*"Value":"\([^"]*\)".*/\1/p')"
echo "path: $(get '/parameters?path=/demo/app&recursive=true' | tr ',' '\n' | grep -c '"/demo/app/') parameters"
