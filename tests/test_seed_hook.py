"""The azd `postprovision` hook seeds the routes table after `azd up`, once: run here as azd runs it
(the environment's values exported), against Azurite."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

from azure.data.tables import TableClient

from routing.routes.files import load_routes_file
from routing.routes.tables import PARTITION_KEY
from tests.azurite import Azurite

ROOT = Path(__file__).resolve().parent.parent
HOOK = ROOT / "infra" / "hooks" / "seed-routes.sh"


def test_azure_yaml_runs_the_seed_hook_after_provisioning() -> None:
    text = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    assert re.search(r"^hooks:\n(?:  #.*\n)*  postprovision:\n    posix:\n      shell: sh\n", text, re.MULTILINE), text
    assert "      run: ./infra/hooks/seed-routes.sh\n" in text
    assert os.access(HOOK, os.X_OK)


def run_hook(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(HOOK)], check=False, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )


def test_the_hook_seeds_an_empty_routes_table_once_and_leaves_edits_alone(azurite: Azurite, tmp_path: Path) -> None:
    table = f"seed{uuid.uuid4().hex[:12]}"
    env = {"ROUTES_STORAGE": azurite.connection_string, "ROUTES_TABLE": table}
    first = run_hook(env)
    assert first.returncode == 0, first.stdout + first.stderr
    client = TableClient.from_connection_string(azurite.connection_string, table_name=table)
    rows = list(client.query_entities("PartitionKey eq @pk", parameters={"pk": PARTITION_KEY}))
    wanted = load_routes_file(ROOT / "infra" / "routes.deployed.json")
    assert sorted(r["Name"] for r in rows) == sorted(e.name for e in wanted.endpoints)

    # An operator's edit since: a second provision must not undo it.
    client.delete_entity(PARTITION_KEY, rows[0]["RowKey"])
    second = run_hook(env)
    assert second.returncode == 0 and "left as it is" in second.stdout, second.stdout + second.stderr
    assert len(list(client.query_entities("PartitionKey eq @pk", parameters={"pk": PARTITION_KEY}))) == len(rows) - 1


def test_the_hook_gives_up_with_the_way_to_seed_by_hand_when_the_table_stays_unreadable() -> None:
    nowhere = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;"
    )
    result = run_hook({"ROUTES_STORAGE": nowhere, "SEED_ROUTES_TRIES": "2", "SEED_ROUTES_WAIT": "0"})
    assert result.returncode == 1
    assert "seed it later: routing routes import infra/routes.deployed.json" in result.stderr
    assert "a2V5" not in result.stderr and json.dumps(nowhere) not in result.stderr
