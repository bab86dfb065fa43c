#!/bin/sh
# Blind-mode test client: git over HTTPS. Usage: git.sh BASE_URL (see README.md).
# Sends the token the way CI systems do: an extra Authorization header.
set -u
echo "==kz== TOKEN $API_TOKEN"
GIT_TERMINAL_PROMPT=0 git -c "http.extraHeader=Authorization: Bearer $API_TOKEN" \
  ls-remote "$1/repo.git"
rc=$?
echo "==kz== GIT $rc"
echo "==kz== END"
[ "$rc" -eq 0 ] || exit 3
