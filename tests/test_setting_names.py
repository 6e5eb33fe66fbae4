"""A route's `connection` names an app setting; a key or token pasted there instead is refused with the
message for secrets, and the setting names people really use are accepted. (The keys below are random
values made for this test, not anyone's.)"""

from __future__ import annotations

import pytest

from routing.errors import Problem
from routing.routes.table import Endpoint, parse_endpoint
from routing.settings import looks_like_secret

SECRET_MESSAGE = (
    "must be the NAME of an app setting that holds the connection, never the connection string or key itself"
)

NAMES = [
    "EGRESS_HUB",
    "EventHubConnection",
    "SB_CONN__fullyQualifiedNamespace",
    "AzureWebJobsStorage",
    "AzureWebJobsStorage__accountName",
    "TELEMETRY_HUB_CONNECTION",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "ROUTES_STORAGE__tableServiceUri",
    "ServiceBusConnection__fullyQualifiedNamespace",
    "AzureWebJobsEventHubConnectionString",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "MySuperLongEventHubConnectionSettingForPlant7Telemetry",
    "MyEHConnForSiteA1Line2Telemetry",
    "SITE42_PLANT7_LINE3_HUB_CONNECTION",
    "TwinsHub2Connection3Secondary",
    "Plant7EventHub2Connection",
    "EH_1_2_3_CONN_A_B_C_PRIMARY",
    "BENCH_AMQP_CONNECTION",
    "ALERTS_SB_CONN_V2",
    "EventGrid.TopicKey",
    "my-setting",
    "HUB",
    "HUB_2",
    "conn1",
]

SECRETS = {
    "an Event Hubs SAS key without its padding": "Zk1YQgswMZqmvSNk37bkUTxbZge8jUIUZwY4WJg3aDw",
    "a storage account key without its padding": (
        "lSmhoxSix1lUSy7PdVvYYsqz4xOglnXHpBXSn64Ew1koG9jlKlPsmEN8oWrRjG5ZoSpsMD0e6g3eSWi85dx3Yg"
    ),
    "a hex key of 32 characters": "b505fe823186308c9b6d4dc1efb3d6dd",
    "a hex key of 64 upper-case characters": "10EA5CB84AE348B86809C01A2D862AE908A3DCD94EBC047D2FF2B0FCD519A3CD",
    "a JWT": (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
        "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
    ),
    "a JWT with an empty signature": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
    # Each caught by one rule alone: a short unsigned JWT (`{"alg":"none"}.{}.`), and a key of
    # base64 length whose random characters happen to form long words.
    "a short unsigned JWT": "eyJhbGciOiJub25lIn0.e30.",
    "a key of long random words": "k816ZyuqzycYOXshWcUHO1czqUa23xnjdbbtilEawxI",
    "random letters and digits": "duw3yF9tbM6oGGkpVNivSJP1zV4sJi8Z",
    "a base64url token": "wRBFb2EqRLwbfL39V2n3RmIrNnSDQzOHfVosfonqICw",
    "a prefixed API token": "ghp_CymqbEaw8qe9r0QSKs2zjqiOhxuVNYtodejX",
    "a prefixed secret key": "sk_live_dIkcwKc8Zk7z6UVujLB0U6u9",
    "a name with a hex key in it": "HUB_b505fe823186308c9b6d4dc1efb3d6dd",
    # What was refused before stays refused, with the same message.
    "a connection string": "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=abc=",
    "a padded key": "Zk1YQgswMZqmvSNk37bkUTxbZge8jUIUZwY4WJg3aDw=",
    "a URL": "https://x.servicebus.windows.net/",
}


def endpoint(**fields: str) -> Endpoint | list[Problem]:
    raw = {"name": "hub", "type": "EventHub", "eventTypes": ["SensorChange"], "connection": "HUB", "path": "h"}
    return parse_endpoint({**raw, **fields}, "test")


@pytest.mark.parametrize("name", NAMES)
def test_setting_names_people_use_are_accepted(name: str) -> None:
    assert not looks_like_secret(name)
    parsed = endpoint(connection=name, secondaryConnection=name)
    assert isinstance(parsed, Endpoint), parsed
    assert parsed.connection == parsed.secondary_connection == name


@pytest.mark.parametrize("kind", SECRETS)
def test_a_key_or_token_where_a_setting_name_belongs_is_refused(kind: str) -> None:
    secret = SECRETS[kind]
    for field_name in ("connection", "secondaryConnection"):
        problems = endpoint(**{field_name: secret})
        assert isinstance(problems, list), f"{kind} accepted as a setting name in {field_name}"
        assert [str(p) for p in problems] == [f"endpoint 'hub', field '{field_name}': {SECRET_MESSAGE}"]
        assert secret not in str(problems[0])  # the message never repeats the secret
