"""The deployment in infra/: the Bicep parses (pycep, the parser checkov uses), declares the resources
the router runs on, grants its identity exactly the roles it needs on narrow scopes, and sets exactly
the app settings the code reads (routing/settings.py SETTINGS_LIST, read here so new settings are
checked as they are added). The Bicep compiler cannot run here; these tests and checkov stand in for it.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any, cast

import pytest
from opentelemetry.metrics import Instrument
from pycep import BicepParser

from routing import observability
from routing.health import STATE_VALUES as HEALTH_STATE_VALUES
from routing.model import EndpointType
from routing.routes.table import parse_routes
from routing.settings import SETTINGS_LIST

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"

# Built-in Azure role definition ids (the same in every tenant) and their names.
ROLES = {
    "a638d3c7-ab3a-418d-83e6-5f17a39d4fde": "Azure Event Hubs Data Receiver",
    "2b629674-e913-4c01-ae53-ef4638d8f975": "Azure Event Hubs Data Sender",
    "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39": "Azure Service Bus Data Sender",
    "d5a91429-5739-47e2-a06b-3470a27159e7": "EventGrid Data Sender",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
}

# Identity-based connection settings: `<NAME>__<property>` naming the service, plus these two.
SERVICE_PROPERTIES = ("fullyQualifiedNamespace", "tableServiceUri", "blobServiceUri", "topicEndpointUri")
IDENTITY_PROPERTIES = ("credential", "clientId")
# App settings the platform (host, Python worker) reads, not the code: set by the Bicep without a SETTINGS_LIST entry.
PLATFORM_PREFIXES = ("AzureWebJobsStorage__", "APPLICATIONINSIGHTS_", "FUNCTIONS_", "PYTHON_")

# Which service each known connection reaches, and the router.bicep parameter that carries its address.
CONNECTION_TARGETS = {
    "TELEMETRY_HUB_CONNECTION": ("fullyQualifiedNamespace", "eventHubsNamespace"),
    "TWINS_HUB_CONNECTION": ("fullyQualifiedNamespace", "eventHubsNamespace"),
    "ROUTES_STORAGE": ("tableServiceUri", "tableEndpoint"),
    "DEADLETTER_STORAGE": ("blobServiceUri", "blobEndpoint"),
    "EGRESS_HUB": ("fullyQualifiedNamespace", "eventHubsNamespace"),
    "EGRESS_BUS": ("fullyQualifiedNamespace", "serviceBusNamespace"),
    "EGRESS_GRID": ("topicEndpointUri", "eventGridTopicEndpoint"),
    "EGRESS_ARCHIVE": ("blobServiceUri", "blobEndpoint"),
}

# The router's OpenTelemetry metrics, as they land in Application Insights' customMetrics (by name): read
# from routing/observability.py, so a new instrument the workbook does not chart fails a test.
INSTRUMENT = re.compile(r'meter\.create_(?:counter|up_down_counter|histogram|gauge)\(\s*"([a-z_.]+)"')
METRICS = tuple(INSTRUMENT.findall((ROOT / "routing" / "observability.py").read_text(encoding="utf-8")))
# What each health state is exported as (router.endpoint.state), from routing/health.py.
STATE_VALUES = {state.value: number for state, number in HEALTH_STATE_VALUES.items()}


@cache
def bicep(relative: str) -> dict[str, Any]:
    return cast(dict[str, Any], BicepParser().parse(file_path=INFRA / relative))


def render(value: Any) -> Any:
    """A pycep expression as Bicep-like text (`a.b.c`, `fn(...)`); literals stay as they are."""
    if isinstance(value, dict) and "operator" in value:
        operator = value["operator"]
        operands = operator["operands"]
        if operator["type"] == "property_accessor":
            return f"{render(operands['operand_1'])}.{render(operands['operand_2'])}"
        return f"{operator['type']}({', '.join(str(render(v)) for v in operands.values())})"
    if isinstance(value, dict) and "function" in value:
        function = value["function"]
        args = ", ".join(str(render(v)) for v in function["parameters"].values() if v is not None)
        text = f"{function['type']}({args})"
        return f"{text}.{function['property_name']}" if function.get("property_name") else text
    return value


def resources(relative: str, type_: str) -> dict[str, dict[str, Any]]:
    """The resources of one type in a file, by symbolic name, each as its (unconditioned) body."""
    found = {}
    for name, resource in bicep(relative)["resources"].items():
        if resource["type"] == type_:
            config = resource["config"]
            found[name] = config["config"] if "config" in config and "condition" in config else config
    return found


def resource(relative: str, type_: str) -> dict[str, Any]:
    (only,) = resources(relative, type_).values()
    return only


def condition(relative: str, name: str) -> Any:
    return render(bicep(relative)["resources"][name]["config"].get("condition"))


def module_params(module: str) -> dict[str, Any]:
    params: dict[str, Any] = bicep("main.bicep")["modules"][module]["config"]["params"]
    return {name: render(value) for name, value in params.items()}


def main_value(module: str, param: str) -> Any:
    """What main.bicep passes to a module parameter, with a variable reference resolved to its value."""
    passed = module_params(module)[param]
    variables = bicep("main.bicep")["variables"]
    return variables[passed]["value"] if isinstance(passed, str) and passed in variables else passed


def app_settings() -> dict[str, Any]:
    site = resource("app/router.bicep", "Microsoft.Web/sites")
    entries = site["properties"]["siteConfig"]["appSettings"]
    names = [entry["name"] for entry in entries]
    assert len(names) == len(set(names)), f"app settings set twice: {sorted({n for n in names if names.count(n) > 1})}"
    return {entry["name"]: render(entry["value"]) for entry in entries}


def deployed_routes() -> Any:
    return json.loads((INFRA / "routes.deployed.json").read_text(encoding="utf-8"))


# --- the files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(p.relative_to(INFRA).as_posix() for p in INFRA.rglob("*.bicep")))
def test_every_bicep_file_parses(path: str) -> None:
    parsed = bicep(path)
    assert parsed["resources"] or parsed["modules"], f"{path} declares nothing"


def test_main_uses_every_module_and_every_module_exists() -> None:
    used = {module["detail"]["path"] for module in bicep("main.bicep")["modules"].values()}
    on_disk = {p.relative_to(INFRA).as_posix() for p in (INFRA / "app").glob("*.bicep")}
    assert used == on_disk


def test_module_params_match_the_module_files() -> None:
    for name, module in bicep("main.bicep")["modules"].items():
        declared = bicep(module["detail"]["path"])["parameters"]
        passed = set(module["config"]["params"])
        required = {p for p, spec in declared.items() if "default" not in spec}
        assert passed <= set(declared), f"module {name} passes unknown parameters {sorted(passed - set(declared))}"
        assert required <= passed, f"module {name} misses required parameters {sorted(required - passed)}"


def test_parameters_file_is_azd_style_and_covers_required_parameters() -> None:
    parameters = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    declared = bicep("main.bicep")["parameters"]
    assert set(parameters) <= set(declared)
    assert {p for p, spec in declared.items() if "default" not in spec} <= set(parameters)
    assert parameters["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert parameters["location"]["value"] == "${AZURE_LOCATION}"
    assert parameters["principalId"]["value"] == "${AZURE_PRINCIPAL_ID}"
    assert declared["principalId"]["default"] == "", "the deployer's grant must stay optional"


def test_azure_yaml_deploys_this_folder_as_the_router_function() -> None:
    text = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    assert re.search(
        r"^services:\n  router:\n    project: \.\n    language: python\n    host: function$", text, re.MULTILINE
    ), text
    site = resource("app/router.bicep", "Microsoft.Web/sites")
    assert site["tags"]["function"]["parameters"]["arg_2"] == {"'azd-service-name'": "router"}


# --- the resources -----------------------------------------------------------------------------------


def test_function_app_is_flex_consumption_python_311_running_as_the_identity() -> None:
    plan = resource("app/router.bicep", "Microsoft.Web/serverfarms")
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["properties"]["reserved"] is True

    site = resource("app/router.bicep", "Microsoft.Web/sites")
    assert site["kind"] == "functionapp,linux"
    assert site["identity"]["type"] == "UserAssigned"
    assert site["properties"]["httpsOnly"] is True
    config = site["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    assert config["scaleAndConcurrency"] == {
        "instanceMemoryMB": "instanceMemoryMB",
        "maximumInstanceCount": "maximumInstanceCount",
    }
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["value"] == "${blobEndpoint}${deploymentContainerName}"
    assert storage["authentication"] == {"type": "UserAssignedIdentity", "userAssignedIdentityResourceId": "identityId"}

    # The scale limits are main.bicep parameters, passed straight through.
    assert main_value("router", "instanceMemoryMB") == "instanceMemoryMB"
    assert main_value("router", "maximumInstanceCount") == "maximumInstanceCount"
    assert {"instanceMemoryMB", "maximumInstanceCount"} <= set(bicep("main.bicep")["parameters"])
    assert main_value("router", "identityId") == "routerIdentity.id"
    assert main_value("router", "identityClientId") == "routerIdentity.properties.clientId"
    identity = bicep("main.bicep")["resources"]["routerIdentity"]
    assert identity["type"] == "Microsoft.ManagedIdentity/userAssignedIdentities"


def test_storage_takes_identities_only_and_holds_the_deployment_dead_letters_and_routes() -> None:
    account = resource("app/storage.bicep", "Microsoft.Storage/storageAccounts")["properties"]
    assert account["allowSharedKeyAccess"] is False
    assert account["supportsHttpsTrafficOnly"] is True
    assert account["minimumTlsVersion"] == "TLS1_2"
    assert account["allowBlobPublicAccess"] is False

    containers = resources("app/storage.bicep", "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert sorted(c["name"] for c in containers.values()) == [
        "archiveContainerName",
        "deadLetterContainerName",
        "deploymentContainerName",
    ]
    assert all(c["properties"]["publicAccess"] == "None" for c in containers.values())
    assert main_value("storage", "deadLetterContainerName") == "deadletters"
    # The app runs its package from the very container the storage module creates.
    assert module_params("storage")["deploymentContainerName"] == module_params("router")["deploymentContainerName"]

    table = resource("app/storage.bicep", "Microsoft.Storage/storageAccounts/tableServices/tables")
    assert table["name"] == "routesTableName"
    assert main_value("storage", "routesTableName") == "routes"


def test_event_hubs_has_both_ingress_hubs_with_the_router_group_and_the_egress_hub() -> None:
    namespace = resource("app/eventhubs.bicep", "Microsoft.EventHub/namespaces")
    assert namespace["sku"]["name"] == "Standard", "Basic has no consumer groups besides $Default"
    assert namespace["properties"]["disableLocalAuth"] is True

    hubs = resources("app/eventhubs.bicep", "Microsoft.EventHub/namespaces/eventhubs")
    by_name = {hub["name"]: (symbol, hub) for symbol, hub in hubs.items()}
    assert set(by_name) == {"telemetryHubName", "twinsHubName", "egressHubName"}
    for hub_param, partitions_param in [
        ("telemetryHubName", "telemetryPartitionCount"),
        ("twinsHubName", "twinsPartitionCount"),
        ("egressHubName", "egressPartitionCount"),
    ]:
        assert by_name[hub_param][1]["properties"]["partitionCount"] == partitions_param
        assert main_value("eventHubs", partitions_param) == partitions_param
        assert partitions_param in bicep("main.bicep")["parameters"]

    groups = resources("app/eventhubs.bicep", "Microsoft.EventHub/namespaces/eventhubs/consumergroups")
    assert sorted(g["parent"] for g in groups.values()) == sorted(
        [by_name["telemetryHubName"][0], by_name["twinsHubName"][0]]
    )
    assert all(g["name"] == "routerConsumerGroupName" for g in groups.values())
    assert main_value("eventHubs", "routerConsumerGroupName") == "router"
    assert main_value("eventHubs", "telemetryHubName") == "telemetry"
    assert main_value("eventHubs", "twinsHubName") == "twins-events"
    assert main_value("eventHubs", "egressHubName") == "egress"


def test_service_bus_topic_drops_duplicates_and_the_subscription_keeps_sessions() -> None:
    namespace = resource("app/servicebus.bicep", "Microsoft.ServiceBus/namespaces")
    assert namespace["sku"]["name"] == "Standard", "Basic has no topics"
    assert namespace["properties"]["disableLocalAuth"] is True
    topic = resource("app/servicebus.bicep", "Microsoft.ServiceBus/namespaces/topics")
    assert topic["properties"]["requiresDuplicateDetection"] is True
    subscription = resource("app/servicebus.bicep", "Microsoft.ServiceBus/namespaces/topics/subscriptions")
    assert subscription["parent"] == "topic"
    assert subscription["properties"]["requiresSession"] is True


def test_event_grid_topic_takes_event_grid_schema_from_identities_only() -> None:
    topic = resource("app/eventgrid.bicep", "Microsoft.EventGrid/topics")
    assert topic["properties"]["inputSchema"] == "EventGridSchema"
    assert topic["properties"]["disableLocalAuth"] is True


def test_application_insights_is_workspace_based_and_takes_entra_tokens_only() -> None:
    workspace = resource("app/monitoring.bicep", "Microsoft.OperationalInsights/workspaces")
    assert workspace["name"] == "logAnalyticsName"
    component = resource("app/monitoring.bicep", "Microsoft.Insights/components")
    assert render(component["properties"]["WorkspaceResourceId"]) == "logAnalytics.id"
    assert component["properties"]["DisableLocalAuth"] is True


# --- the roles ---------------------------------------------------------------------------------------


def role_variables() -> dict[str, str]:
    """rbac.bicep's role id variables: variable name -> role id, checked against the name beside it."""
    text = (INFRA / "app" / "rbac.bicep").read_text(encoding="utf-8")
    found = {}
    for variable, role_id, comment in re.findall(r"^var (\w+RoleId) = '([0-9a-f-]{36})' // (.+)$", text, re.M):
        assert ROLES.get(role_id) == comment.strip(), (
            f"{variable}: {role_id} is {ROLES.get(role_id)!r}, not {comment!r}"
        )
        found[variable] = role_id
    parsed = bicep("app/rbac.bicep")["variables"]
    assert {name: parsed[name]["value"] for name in found} == found
    return found


def assignments(principal: str) -> set[tuple[str, str, str]]:
    """(role name, scope resource type, scope resource name) of the role assignments to one principal."""
    role_ids = role_variables()
    existing = bicep("app/rbac.bicep")["resources"]
    granted = set()
    for body in resources("app/rbac.bicep", "Microsoft.Authorization/roleAssignments").values():
        properties = body["properties"]
        if properties["principalId"] != principal:
            continue
        role = properties["roleDefinitionId"]["function"]
        assert role["type"] == "subscription_resource_id"
        assert role["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions"
        scope = existing[body["scope"]]
        assert scope["existing"] is True
        granted.add((ROLES[role_ids[role["parameters"]["resource_name_1"]]], scope["type"], scope["config"]["name"]))
    return granted


def test_role_ids_are_the_built_in_roles_named_beside_them() -> None:
    assert set(role_variables().values()) == set(ROLES)


CONTAINER = "Microsoft.Storage/storageAccounts/blobServices/containers"


def test_router_identity_has_exactly_the_roles_it_needs_each_on_a_narrow_scope() -> None:
    assert assignments("routerPrincipalId") == {
        ("Azure Event Hubs Data Receiver", "Microsoft.EventHub/namespaces/eventhubs", "telemetryHubName"),
        ("Azure Event Hubs Data Receiver", "Microsoft.EventHub/namespaces/eventhubs", "twinsHubName"),
        ("Azure Event Hubs Data Sender", "Microsoft.EventHub/namespaces/eventhubs", "egressHubName"),
        ("Azure Service Bus Data Sender", "Microsoft.ServiceBus/namespaces/topics", "egressTopicName"),
        ("EventGrid Data Sender", "Microsoft.EventGrid/topics", "eventGridTopicName"),
        ("Storage Table Data Contributor", "Microsoft.Storage/storageAccounts/tableServices/tables", "routesTableName"),
        ("Storage Blob Data Owner", "Microsoft.Storage/storageAccounts", "storageAccountName"),
        ("Storage Blob Data Contributor", CONTAINER, "archiveContainerName"),
        ("Monitoring Metrics Publisher", "Microsoft.Insights/components", "applicationInsightsName"),
    }
    bodies = resources("app/rbac.bicep", "Microsoft.Authorization/roleAssignments").values()
    assert all(
        b["properties"]["principalType"] == "ServicePrincipal"
        for b in bodies
        if b["properties"]["principalId"] == "routerPrincipalId"
    )
    assert main_value("rbac", "routerPrincipalId") == "routerIdentity.properties.principalId"
    # The scopes are the hubs, topic and table the app settings and routes use, not look-alikes.
    for param in ("telemetryHubName", "twinsHubName", "egressHubName", "egressTopicName", "routesTableName"):
        assert module_params("rbac")[param] == param


def test_role_assignment_names_are_unique_per_scope_principal_and_role() -> None:
    names = [render(b["name"]) for b in resources("app/rbac.bicep", "Microsoft.Authorization/roleAssignments").values()]
    assert len(names) == len(set(names))
    assert all(name.startswith("guid(") for name in names)


def test_deploying_principal_may_edit_the_routes_table_when_given() -> None:
    assert assignments("deployerPrincipalId") == {
        ("Storage Table Data Contributor", "Microsoft.Storage/storageAccounts/tableServices/tables", "routesTableName"),
    }
    assert condition("app/rbac.bicep", "deployerRoutesTableContributor") == "not(empty(deployerPrincipalId))"
    assert main_value("rbac", "deployerPrincipalId") == "principalId"


# --- the app settings --------------------------------------------------------------------------------


def expected_connections() -> dict[str, bool]:
    """Connection settings the deployment must set, from SETTINGS_LIST and the deployed routes."""
    wanted = {s.name: True for s in SETTINGS_LIST if s.deployed and s.connection}
    for endpoint in parse_routes(deployed_routes(), "infra/routes.deployed.json").endpoints:
        wanted[endpoint.connection] = True
        if endpoint.secondary_connection:
            wanted[endpoint.secondary_connection] = True
    return wanted


def expected_plain_settings() -> set[str]:
    return {s.name for s in SETTINGS_LIST if s.deployed and not s.connection}


def test_app_settings_are_exactly_the_deployed_settings_the_code_reads() -> None:
    settings = app_settings()
    expected = set(expected_plain_settings())
    for name in expected_connections():
        service = [p for p in SERVICE_PROPERTIES if f"{name}__{p}" in settings]
        assert len(service) == 1, f"connection {name} needs exactly one of {name}__{{{','.join(SERVICE_PROPERTIES)}}}"
        expected |= {f"{name}__{service[0]}", *(f"{name}__{p}" for p in IDENTITY_PROPERTIES)}
    platform = {name for name in settings if name.startswith(PLATFORM_PREFIXES)}

    missing = sorted(expected - set(settings))
    unread = sorted(set(settings) - expected - platform)
    assert not missing, (
        f"in SETTINGS_LIST (deployed) or the deployed routes, but not set by infra/app/router.bicep: {missing}"
    )
    assert not unread, f"set by infra/app/router.bicep, but not a deployed setting in SETTINGS_LIST: {unread}"


def test_local_only_settings_are_not_deployed() -> None:
    local_only = {s.name for s in SETTINGS_LIST if not s.deployed}
    assert {"ROUTES_FILE", "ROUTER_OUTPUT_DIR"} <= local_only
    assert not {name for name in app_settings() if name.split("__")[0] in local_only}


def test_connections_use_the_identity_and_reach_the_right_service() -> None:
    settings = app_settings()
    for name in expected_connections():
        assert name not in settings, f"{name} would be a connection string; use {name}__<property> and the identity"
        assert settings[f"{name}__credential"] == "managedidentity"
        assert settings[f"{name}__clientId"] == "identityClientId"
        if name in CONNECTION_TARGETS:
            service_property, address = CONNECTION_TARGETS[name]
            assert settings[f"{name}__{service_property}"] == address, name
    assert main_value("router", "eventHubsNamespace") == "eventHubs.outputs.fullyQualifiedNamespace"
    assert main_value("router", "serviceBusNamespace") == "serviceBus.outputs.fullyQualifiedNamespace"
    assert main_value("router", "eventGridTopicEndpoint") == "eventGrid.outputs.endpoint"
    assert main_value("router", "tableEndpoint") == "storage.outputs.tableEndpoint"
    assert main_value("router", "blobEndpoint") == "storage.outputs.blobEndpoint"


def test_platform_settings_run_the_host_and_telemetry_with_the_identity() -> None:
    settings = app_settings()
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == "identityClientId"
    assert settings["AzureWebJobsStorage__blobServiceUri"] == "blobEndpoint"
    assert settings["APPLICATIONINSIGHTS_CONNECTION_STRING"] == "applicationInsightsConnectionString"
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "ClientId=${identityClientId};Authorization=AAD"
    # Flex Consumption takes the runtime from functionAppConfig and refuses these.
    assert not {"FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE"} & set(settings)


def test_open_telemetry_mode_leaves_the_worker_logs_to_the_app_so_each_is_exported_once() -> None:
    # host.json telemetryMode OpenTelemetry: the host exports the worker's logs unless the worker opts in.
    # PYTHON_ENABLE_OPENTELEMETRY opts in; routing/observability.py then exports them with the metrics
    # (tests/test_observability.py counts the exports). PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY would
    # make the worker configure Azure Monitor as well.
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    assert host["telemetryMode"] == "OpenTelemetry"
    settings = app_settings()
    sample = json.loads((ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))["Values"]
    for where, values in (("infra/app/router.bicep", settings), ("local.settings.sample.json", sample)):
        assert values.get("PYTHON_ENABLE_OPENTELEMETRY") == "true", where
        assert "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY" not in values, where


def test_a_partition_without_a_checkpoint_starts_from_the_oldest_retained_event() -> None:
    # docs/DEPLOY.md "Where the router starts reading": Flex scales to zero, so the first instance often
    # starts because events arrived; fromEnd would skip them. An operator who wants history skipped on a
    # hub that has some sets fromEnqueuedTime by app setting, which the deployment must then not fight.
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    assert host["extensions"]["eventHubs"]["initialOffsetOptions"] == {"type": "fromStart"}
    assert not [name for name in app_settings() if name.startswith("AzureFunctionsJobHost__")]
    deploy = (ROOT / "docs" / "DEPLOY.md").read_text(encoding="utf-8")
    assert "AzureFunctionsJobHost__extensions__eventHubs__initialOffsetOptions__type=fromEnqueuedTime" in deploy


def test_settings_name_the_resources_main_creates() -> None:
    settings = app_settings()
    for setting, router_param, module, module_param in [
        ("TELEMETRY_HUB_NAME", "telemetryHubName", "eventHubs", "telemetryHubName"),
        ("TWINS_HUB_NAME", "twinsHubName", "eventHubs", "twinsHubName"),
        ("TELEMETRY_HUB_CONSUMER_GROUP", "routerConsumerGroupName", "eventHubs", "routerConsumerGroupName"),
        ("TWINS_HUB_CONSUMER_GROUP", "routerConsumerGroupName", "eventHubs", "routerConsumerGroupName"),
        ("ROUTES_TABLE", "routesTableName", "storage", "routesTableName"),
        ("DEADLETTER_CONTAINER", "deadLetterContainerName", "storage", "deadLetterContainerName"),
    ]:
        assert settings[setting] == router_param
        assert module_params("router")[router_param] == module_params(module)[module_param], setting
    assert settings["ROUTES_REFRESH_SECONDS"] == "30"


# --- the deployed routes -----------------------------------------------------------------------------


def test_deployed_routes_are_valid_and_point_at_the_deployed_resources() -> None:
    table = parse_routes(deployed_routes(), "infra/routes.deployed.json")
    by_type = {e.type: e for e in table.endpoints}
    assert len(by_type) == len(table.endpoints) == 4

    hub = by_type[EndpointType.EVENT_HUB]
    assert {t.value for t in hub.event_types} == {
        "DeviceMessages",
        "TopologyOperation",
        "SpaceChange",
        "SensorChange",
        "UdfCustom",
        "Microsoft.DigitalTwins.Twin.Create",
        "Microsoft.DigitalTwins.Twin.Update",
        "Microsoft.DigitalTwins.Twin.Delete",
        "Microsoft.DigitalTwins.Relationship.Create",
        "Microsoft.DigitalTwins.Relationship.Update",
        "Microsoft.DigitalTwins.Relationship.Delete",
        "microsoft.iot.telemetry",
    }
    assert (hub.connection, hub.path) == ("EGRESS_HUB", main_value("eventHubs", "egressHubName"))

    bus = by_type[EndpointType.SERVICE_BUS]
    assert {t.value for t in bus.event_types} == {"SensorChange", "SpaceChange"}
    assert (bus.connection, bus.path) == ("EGRESS_BUS", main_value("serviceBus", "topicName"))

    grid = by_type[EndpointType.EVENT_GRID]
    assert {t.value for t in grid.event_types} == {"TopologyOperation", "UdfCustom"}
    assert grid.connection == "EGRESS_GRID"
    topic = resource("app/eventgrid.bicep", "Microsoft.EventGrid/topics")
    assert grid.format.value == topic["properties"]["inputSchema"], "the topic refuses events in another schema"

    # The cold path: every event type, to the container the deployment makes (the router makes none) and
    # the identity may write to.
    archive = by_type[EndpointType.STORAGE]
    assert set(archive.event_types) == set(hub.event_types)
    assert archive.connection == "EGRESS_ARCHIVE"
    assert archive.path == main_value("storage", "archiveContainerName") == main_value("rbac", "archiveContainerName")


# --- watching it -------------------------------------------------------------------------------------


def workbook_queries() -> list[str]:
    workbook = json.loads((INFRA / "app" / "workbook.json").read_text(encoding="utf-8"))
    assert workbook["version"] == "Notebook/1.0"
    queries = [item["content"] for item in workbook["items"] if item["type"] == 3]
    assert all(q["resourceType"] == "microsoft.insights/components" for q in queries)
    return [q["query"] for q in queries]


def test_the_metrics_are_the_instruments_routing_observability_defines() -> None:
    # The pattern above finds every instrument: as many names as the module has instruments.
    instruments = [v for v in vars(observability).values() if isinstance(v, Instrument)]
    assert len(METRICS) == len(set(METRICS)) == len(instruments)
    assert {"router.endpoint.state", "router.parked.messages", "router.expired"} <= set(METRICS)


def test_workbook_charts_every_router_metric() -> None:
    text = "\n".join(workbook_queries())
    uncharted = [m for m in METRICS if f'"{m}"' not in text]
    assert not uncharted, f"the workbook charts none of {uncharted}"
    assert "requests" in text and "success == false" in text, "failed invocations belong on the failures chart"

    workbook = resource("app/workbook.bicep", "Microsoft.Insights/workbooks")
    assert workbook["properties"]["serializedData"]["function"] == {
        "type": "load_text_content",
        "parameters": {"file_path": "workbook.json", "encoding": None},
    }
    assert workbook["properties"]["sourceId"] == "applicationInsightsId"
    assert main_value("workbook", "applicationInsightsId") == "monitoring.outputs.applicationInsightsId"


def workbook_tiles() -> dict[str, dict[str, Any]]:
    workbook = json.loads((INFRA / "app" / "workbook.json").read_text(encoding="utf-8"))
    return {item["name"]: item["content"] for item in workbook["items"] if item["type"] == 3}


def charted(query: str) -> set[str]:
    """The metric names a query reads."""
    names = set(re.findall(r'name == "([a-z_.]+)"', query))
    for listed in re.findall(r"name in \(([^)]*)\)", query):
        names |= set(re.findall(r'"([a-z_.]+)"', listed))
    return names


def test_workbook_shows_each_endpoints_state_and_what_is_parked_for_it() -> None:
    tiles = workbook_tiles()
    every_name = set().union(*(charted(t["query"]) for t in tiles.values()))
    assert every_name <= set(METRICS), f"the workbook charts metrics the router has not: {every_name - set(METRICS)}"
    per_endpoint = {
        "endpoint-health-now": {"router.endpoint.state"},
        "endpoint-state": {"router.endpoint.state"},
        "parked-messages": {"router.parked.messages"},
        "parked-keys": {"router.parked.keys"},
        "parked-redelivered-expired": {"router.parked", "router.redelivered", "router.expired"},
    }
    for name, metrics in per_endpoint.items():
        query = tiles[name]["query"]
        assert charted(query) == metrics, name
        assert 'customDimensions["endpoint"]' in query, f"{name} is not split by endpoint"
    # Gauges: the worst an instance reported (summing them would add instances up); counters: the sum.
    for name in ("endpoint-state", "parked-messages", "parked-keys"):
        assert "max(valueMax) by endpoint, bin(timestamp, {TimeRange:grain})" in tiles[name]["query"], name
    assert "sum(valueSum)" in tiles["parked-redelivered-expired"]["query"]
    # The health table names the states as the CLI does, from the numbers routing/health.py exports.
    now = tiles["endpoint-health-now"]["query"]
    for state, number in STATE_VALUES.items():
        if number:
            assert f'value >= {number}, "{state}"' in now, state
    assert '"healthy")' in now and tiles["endpoint-health-now"]["visualization"] == "table"


def alert_rules() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Each alert rule by the metric its query reads: (its properties, its one criterion)."""
    rules = resources("app/alerts.bicep", "Microsoft.Insights/scheduledQueryRules")
    by_metric = {}
    for body in rules.values():
        (criterion,) = body["properties"]["criteria"]["allOf"]
        (metric,) = re.findall(r'name == "(router\.[a-z_.]+)"', criterion["query"])
        by_metric[metric] = (body["properties"], criterion)
        assert body["properties"]["scopes"] == ["applicationInsightsId"]
        assert body["properties"]["actions"] == {"actionGroups": "actionGroups"}
        assert body["properties"]["enabled"] is True and body["properties"]["autoMitigate"] is True
        assert metric in body["properties"]["description"], "the description names the metric it watches"
    assert len(by_metric) == len(rules), "two rules watch the same metric"
    assert set(by_metric) <= set(METRICS), f"alerts on metrics the router has not: {set(by_metric) - set(METRICS)}"
    return by_metric


def test_alerts_fire_on_any_dead_letter_and_on_lag_above_the_threshold() -> None:
    by_metric = alert_rules()
    assert set(by_metric) == {"router.deadletters", "router.lag", "router.endpoint.state", "router.expired"}

    properties, dead = by_metric["router.deadletters"]
    assert (dead["operator"], dead["threshold"], properties["windowSize"]) == ("GreaterThan", 0, "PT15M")

    properties, lag = by_metric["router.lag"]
    assert "percentile(" in lag["query"] and ", 95)" in lag["query"]
    assert (lag["operator"], lag["threshold"]) == ("GreaterThan", "lagAlertThresholdSeconds")
    assert bicep("main.bicep")["parameters"]["lagAlertThresholdSeconds"]["default"] == 60
    assert main_value("alerts", "lagAlertThresholdSeconds") == "lagAlertThresholdSeconds"

    # Email only when an address is given; the alert rules exist either way.
    assert condition("app/alerts.bicep", "actionGroup") == "emailAlerts"
    assert bicep("main.bicep")["parameters"]["alertEmail"]["default"] == ""


EVERY_ENDPOINT = [{"name": "endpoint", "operator": "Include", "values": ["*"]}]


def test_an_endpoint_unhealthy_or_dead_for_15_minutes_alerts_once_per_endpoint() -> None:
    properties, rule = alert_rules()["router.endpoint.state"]
    # Even the best minute of the 15 (each minute the worst instance) was unhealthy or dead.
    assert properties["windowSize"] == "PT15M"
    assert "summarize worst = max(valueMax) by endpoint, minute = bin(timestamp, 1m)" in rule["query"]
    assert rule["query"].endswith("| summarize state = min(worst) by endpoint")
    assert (rule["timeAggregation"], rule["metricMeasureColumn"]) == ("Minimum", "state")
    assert (rule["operator"], rule["threshold"]) == ("GreaterThanOrEqual", "unhealthyState")
    assert bicep("app/alerts.bicep")["variables"]["unhealthyState"]["value"] == STATE_VALUES["unhealthy"]
    assert STATE_VALUES["dead"] > STATE_VALUES["unhealthy"] > STATE_VALUES["degraded"]
    assert rule["dimensions"] == EVERY_ENDPOINT
    assert properties["severity"] == 2  # parked in order: nothing lost yet
    assert "routing routes status" in properties["description"]


def test_parked_messages_that_expire_alert_above_other_dead_letters() -> None:
    by_metric = alert_rules()
    properties, rule = by_metric["router.expired"]
    assert (rule["operator"], rule["threshold"], rule["timeAggregation"]) == ("GreaterThan", 0, "Total")
    assert "sum(valueSum) by endpoint" in rule["query"] and rule["dimensions"] == EVERY_ENDPOINT
    # Order broke for those keys: more severe (lower) than a dead letter.
    assert properties["severity"] < by_metric["router.deadletters"][0]["severity"]
    assert "routing deadletters replay --endpoint" in properties["description"]
