#!/bin/sh
# azd `postprovision` hook (azure.yaml): seed the routes table with infra/routes.deployed.json after
# `azd up`, once. A table that already has routes is left as it is: later edits are yours (routing routes
# ...), and a re-provision must not undo them.
#
# azd runs hooks with the environment's values exported, the deployment's outputs among them:
# ROUTES_STORAGE__tableServiceUri and ROUTES_TABLE. The routes CLI then signs in with your Azure CLI login
# (main.bicep grants the deployer Storage Table Data Contributor on the table). ROUTES_STORAGE, if set
# (a connection string), takes precedence, as for every routes command.
set -eu
cd "$(dirname "$0")/../.."

make --no-print-directory .venv/.cli >/dev/null   # the routing command, every version pinned
routing=.venv/bin/routing
: "${ROUTES_TABLE:=routes}"
export ROUTES_TABLE

# A role assignment made by this very deployment can take minutes to apply (403 until then).
tries=0
until existing=$("$routing" routes list -o json 2>/tmp/seed-routes.err); do
  tries=$((tries + 1))
  if [ "$tries" -ge "${SEED_ROUTES_TRIES:-6}" ]; then
    cat /tmp/seed-routes.err >&2
    echo "seed-routes: could not read the routes table; seed it later: routing routes import infra/routes.deployed.json" >&2
    exit 1
  fi
  echo "seed-routes: the routes table is not readable yet (a new role assignment?); trying again in ${SEED_ROUTES_WAIT:-30} s" >&2
  sleep "${SEED_ROUTES_WAIT:-30}"
done

if [ "$existing" = "[]" ]; then
  "$routing" routes import infra/routes.deployed.json --yes
else
  echo "seed-routes: the routes table has routes already: left as it is (routing routes list shows them)"
fi
