// The function app: Flex Consumption, Python 3.11, running as the user-assigned identity, with exactly
// the app settings the code reads (routing/settings.py SETTINGS_LIST, checked by tests/test_infra.py).
// Connections are identity-based: `<NAME>__fullyQualifiedNamespace` / `__tableServiceUri` /
// `__blobServiceUri` / `__topicEndpointUri` with `<NAME>__credential` and `<NAME>__clientId`.
param location string
param tags object
param planName string
param functionAppName string
param identityId string
param identityClientId string
param instanceMemoryMB int
param maximumInstanceCount int
param applicationInsightsConnectionString string
param blobEndpoint string
param tableEndpoint string
param deploymentContainerName string
param deadLetterContainerName string
param routesTableName string
param eventHubsNamespace string
param telemetryHubName string
param twinsHubName string
param routerConsumerGroupName string
param serviceBusNamespace string
param eventGridTopicEndpoint string

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  //checkov:skip=CKV_AZURE_225:Zone redundancy for Flex Consumption exists only in some regions; the default deployment must work in every Flex region.
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    // Linux: Flex Consumption runs on Linux only.
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: functionAppName
  location: location
  // azd deploys the `router` service of azure.yaml to the app carrying this tag.
  tags: union(tags, {
    'azd-service-name': 'router'
  })
  kind: 'functionapp,linux'
  //checkov:skip=CKV_AZURE_212:Flex Consumption has no fixed instance count: instances follow the Event Hubs partitions' load and the platform replaces failed ones.
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  //checkov:skip=CKV_AZURE_17:Client certificates authenticate HTTP callers; this app has no HTTP triggers.
  //checkov:skip=CKV_AZURE_222:Public network access stays on: it exposes only the host's (unused) HTTP front and the deployment endpoint, which requires Entra sign-in.
  //checkov:skip=CKV_AZURE_213:A health check probes an HTTP path; this app serves none, and Flex Consumption replaces unhealthy instances itself.
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [
        // Functions host storage (leases, Event Hubs checkpoints) with the identity. Blob only: queues
        // serve blob triggers and Durable Functions, which this app does not have.
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'AzureWebJobsStorage__clientId'
          value: identityClientId
        }
        {
          name: 'AzureWebJobsStorage__blobServiceUri'
          value: blobEndpoint
        }
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: applicationInsightsConnectionString
        }
        // Telemetry is sent with the identity's Entra token (Application Insights refuses anything else).
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'ClientId=${identityClientId};Authorization=AAD'
        }
        // Each log and metric exported once: in telemetryMode OpenTelemetry the host exports the worker's
        // logs unless the worker opts in; this opts in, and routing/observability.py exports the routing
        // logs and the metrics itself. Not PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: the worker would
        // then call configure_azure_monitor too (pycep parses at most four comment lines here).
        {
          name: 'PYTHON_ENABLE_OPENTELEMETRY'
          value: 'true'
        }

        // Ingress: the triggers' connections, hubs and consumer groups (function_app.py).
        {
          name: 'TELEMETRY_HUB_CONNECTION__fullyQualifiedNamespace'
          value: eventHubsNamespace
        }
        {
          name: 'TELEMETRY_HUB_CONNECTION__credential'
          value: 'managedidentity'
        }
        {
          name: 'TELEMETRY_HUB_CONNECTION__clientId'
          value: identityClientId
        }
        {
          name: 'TELEMETRY_HUB_NAME'
          value: telemetryHubName
        }
        {
          name: 'TELEMETRY_HUB_CONSUMER_GROUP'
          value: routerConsumerGroupName
        }
        {
          name: 'TWINS_HUB_CONNECTION__fullyQualifiedNamespace'
          value: eventHubsNamespace
        }
        {
          name: 'TWINS_HUB_CONNECTION__credential'
          value: 'managedidentity'
        }
        {
          name: 'TWINS_HUB_CONNECTION__clientId'
          value: identityClientId
        }
        {
          name: 'TWINS_HUB_NAME'
          value: twinsHubName
        }
        {
          name: 'TWINS_HUB_CONSUMER_GROUP'
          value: routerConsumerGroupName
        }

        // Routes: the table the router loads and refreshes.
        {
          name: 'ROUTES_STORAGE__tableServiceUri'
          value: tableEndpoint
        }
        {
          name: 'ROUTES_STORAGE__credential'
          value: 'managedidentity'
        }
        {
          name: 'ROUTES_STORAGE__clientId'
          value: identityClientId
        }
        {
          name: 'ROUTES_TABLE'
          value: routesTableName
        }
        // An edit to the routes table takes effect within this many seconds.
        {
          name: 'ROUTES_REFRESH_SECONDS'
          value: '30'
        }

        // Dead letters: one blob per letter in this container.
        {
          name: 'DEADLETTER_STORAGE__blobServiceUri'
          value: blobEndpoint
        }
        {
          name: 'DEADLETTER_STORAGE__credential'
          value: 'managedidentity'
        }
        {
          name: 'DEADLETTER_STORAGE__clientId'
          value: identityClientId
        }
        {
          name: 'DEADLETTER_CONTAINER'
          value: deadLetterContainerName
        }

        // Egress: the connections infra/routes.deployed.json names, one per deployed endpoint. Routes added
        // later that name other connections need their settings added here too.
        {
          name: 'EGRESS_HUB__fullyQualifiedNamespace'
          value: eventHubsNamespace
        }
        {
          name: 'EGRESS_HUB__credential'
          value: 'managedidentity'
        }
        {
          name: 'EGRESS_HUB__clientId'
          value: identityClientId
        }
        {
          name: 'EGRESS_BUS__fullyQualifiedNamespace'
          value: serviceBusNamespace
        }
        {
          name: 'EGRESS_BUS__credential'
          value: 'managedidentity'
        }
        {
          name: 'EGRESS_BUS__clientId'
          value: identityClientId
        }
        {
          name: 'EGRESS_GRID__topicEndpointUri'
          value: eventGridTopicEndpoint
        }
        {
          name: 'EGRESS_GRID__credential'
          value: 'managedidentity'
        }
        {
          name: 'EGRESS_GRID__clientId'
          value: identityClientId
        }
        // The Storage endpoint's connection: the account's Blob service (its container is the route's
        // path), reached with the identity, which holds Storage Blob Data Contributor on that container.
        {
          name: 'EGRESS_ARCHIVE__blobServiceUri'
          value: blobEndpoint
        }
        {
          name: 'EGRESS_ARCHIVE__credential'
          value: 'managedidentity'
        }
        {
          name: 'EGRESS_ARCHIVE__clientId'
          value: identityClientId
        }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          // Flex Consumption runs the package from this container, read with the identity (no key).
          type: 'blobContainer'
          value: '${blobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }

}

output name string = functionApp.name
