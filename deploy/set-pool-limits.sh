#!/usr/bin/env bash
# Give the concurrency pools their limits on the instance in $DAGSTER_HOME (SQLite or Postgres).
# dagster.yaml holds only `pools: default_limit`; per-pool limits are stored in the instance.
#   llm: concurrent generation steps sending requests to the LLM endpoint (GMAI_POOL_LLM_LIMIT, default 8)
#   gpu: concurrent training stages holding the GPU cluster             (GMAI_POOL_GPU_LIMIT, default 1)
set -euo pipefail
: "${DAGSTER_HOME:?set DAGSTER_HOME to the instance folder (holding dagster.yaml)}"
DAGSTER="${DAGSTER:-dagster}"
"$DAGSTER" instance concurrency set llm "${GMAI_POOL_LLM_LIMIT:-8}"
"$DAGSTER" instance concurrency set gpu "${GMAI_POOL_GPU_LIMIT:-1}"
