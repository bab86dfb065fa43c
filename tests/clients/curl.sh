#!/bin/sh
# Blind-mode test client: curl. Usage: curl.sh BASE_URL h1|h2 (see README.md).
set -u
base=$1
case ${2:-h1} in
  h1) version=--http1.1 ;;
  h2) version=--http2 ;;
  *) echo "usage: curl.sh BASE_URL h1|h2" >&2; exit 2 ;;
esac
tmp=$(mktemp -d) || exit 2
trap 'rm -rf "$tmp"' EXIT
failed=0
echo "==kz== TOKEN $API_TOKEN"
# request KIND URL [curl args...]
request() {
  kind=$1; url=$2; shift 2
  code=$(curl -sS "$version" --max-time 30 -o "$tmp/body" -w '%{http_code} %{http_version}' \
    -H "Authorization: Bearer $API_TOKEN" "$@" "$url" 2>"$tmp/err")
  rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "==kz== $kind ERROR curl exit $rc: $(tr '\n' ' ' <"$tmp/err")"
    failed=1
  else
    # The HTTP version curl itself spoke (to the server, or to kz's proxy under blind mode).
    echo "==kz== $kind-VERSION ${code#* }"
    echo "==kz== $kind ${code% *}"
    cat "$tmp/body"
    echo
  fi
}
request GET "$base/get?kz=1"
request POST "$base/post" -H 'Content-Type: application/json' --data "{\"token\":\"$API_TOKEN\"}"
echo "==kz== END"
[ "$failed" -eq 0 ] || exit 3
