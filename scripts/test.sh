#!/usr/bin/env bash
# The whole test suite on a fresh machine: set up what is missing, check types and lint, run every test.
# CI runs this with KERNMESH_KERNEL_TESTS=required so that kernel tests can only pass, never skip.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "[test] typecheck"
npx tsc -p tsconfig.json --noEmit
echo "[test] lint"
npm run --silent lint
echo "[test] tests"
node scripts/run-tests.mjs "$@"
