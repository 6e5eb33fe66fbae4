// The Digital Twins event router on Azure: a Flex Consumption function app reading the telemetry and
// Digital Twins ingress hubs and delivering to an Event Hub, a Service Bus topic and an Event Grid topic,
// with routes in Table Storage, dead letters in Blob Storage, and Application Insights watching it.
// Every connection uses the one user-assigned identity; no keys or connection strings in app settings.
// `azd up` deploys it (azure.yaml); docs/DEPLOY.md shows the manual `az deployment group create` path.
targetScope = 'resourceGroup'

@minLength(1)
@maxLength(40)
@description('Name of the azd environment; part of every resource name and the azd-env-name tag.')
param environmentName string

@minLength(1)
@description('Region for every resource. Must offer the Flex Consumption plan (az functionapp list-flexconsumption-locations).')
param location string

@description('Object id of the person or pipeline deploying, granted Storage Table Data Contributor on the routes table so `python -m routing routes ...` works against the deployed table. Empty: no grant.')
param principalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
@description('Kind of principal principalId is (ServicePrincipal when a pipeline deploys).')
param principalType string = 'User'

@minValue(1)
@maxValue(32)
@description('Partitions of the telemetry ingress hub: the most instances that can read it at once (Event Hubs Standard allows 32).')
param telemetryPartitionCount int = 4

@minValue(1)
@maxValue(32)
@description('Partitions of the Digital Twins ingress hub.')
param twinsPartitionCount int = 4

@minValue(1)
@maxValue(32)
@description('Partitions of the egress hub: the most consumers that can read it at once.')
param egressPartitionCount int = 4

@allowed([
  512
  2048
  4096
])
@description('Memory of each Flex Consumption instance in MB.')
param instanceMemoryMB int = 2048

@minValue(1)
@maxValue(1000)
@description('Most Flex Consumption instances the app scales out to. Event Hubs triggers use at most one instance per partition, so more than the sum of the ingress partitions buys nothing.')
param maximumInstanceCount int = 40

@minValue(1)
@description('Alert when the 95th percentile of router.lag (now minus enqueued time) over 15 minutes exceeds this many seconds.')
param lagAlertThresholdSeconds int = 60

@description('Email address the alerts are sent to. Empty (or anything without an @): the alert rules fire in the portal only.')
param alertEmail string = ''

// Names the app settings and the shipped routes file (infra/routes.deployed.json) rely on.
var telemetryHubName = 'telemetry'
var twinsHubName = 'twins-events'
var egressHubName = 'egress'
var routerConsumerGroupName = 'router'
var egressTopicName = 'egress'
var egressSubscriptionName = 'consumer'
var routesTableName = 'routes'
var deadLetterContainerName = 'deadletters'
// The Storage endpoint of the shipped routes (the cold path): every event, JSON lines, one blob per batch.
var archiveContainerName = 'archive'

// One token per subscription, resource group, environment and region keeps global names unique and stable
// across redeployments (the azd convention).
var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var functionAppName = 'func-router-${resourceToken}'
// Flex Consumption keeps the deployed package in this container, one per app.
var deploymentContainerName = 'app-package-${resourceToken}'

resource routerIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-router-${resourceToken}'
  location: location
  tags: tags
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    tags: tags
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  params: {
    location: location
    tags: tags
    // Storage account names: 3-24 lowercase letters and digits, globally unique.
    storageAccountName: 'st${resourceToken}'
    deploymentContainerName: deploymentContainerName
    deadLetterContainerName: deadLetterContainerName
    archiveContainerName: archiveContainerName
    routesTableName: routesTableName
  }
}

module eventHubs 'app/eventhubs.bicep' = {
  name: 'eventhubs'
  params: {
    location: location
    tags: tags
    namespaceName: 'evhns-${resourceToken}'
    telemetryHubName: telemetryHubName
    telemetryPartitionCount: telemetryPartitionCount
    twinsHubName: twinsHubName
    twinsPartitionCount: twinsPartitionCount
    egressHubName: egressHubName
    egressPartitionCount: egressPartitionCount
    routerConsumerGroupName: routerConsumerGroupName
  }
}

module serviceBus 'app/servicebus.bicep' = {
  name: 'servicebus'
  params: {
    location: location
    tags: tags
    namespaceName: 'sbns-${resourceToken}'
    topicName: egressTopicName
    subscriptionName: egressSubscriptionName
  }
}

module eventGrid 'app/eventgrid.bicep' = {
  name: 'eventgrid'
  params: {
    location: location
    tags: tags
    topicName: 'evgt-${resourceToken}'
  }
}

module router 'app/router.bicep' = {
  name: 'router'
  params: {
    location: location
    tags: tags
    planName: 'plan-${resourceToken}'
    functionAppName: functionAppName
    identityId: routerIdentity.id
    identityClientId: routerIdentity.properties.clientId
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    applicationInsightsConnectionString: monitoring.outputs.applicationInsightsConnectionString
    blobEndpoint: storage.outputs.blobEndpoint
    tableEndpoint: storage.outputs.tableEndpoint
    deploymentContainerName: deploymentContainerName
    deadLetterContainerName: deadLetterContainerName
    routesTableName: routesTableName
    eventHubsNamespace: eventHubs.outputs.fullyQualifiedNamespace
    telemetryHubName: telemetryHubName
    twinsHubName: twinsHubName
    routerConsumerGroupName: routerConsumerGroupName
    serviceBusNamespace: serviceBus.outputs.fullyQualifiedNamespace
    eventGridTopicEndpoint: eventGrid.outputs.endpoint
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  params: {
    routerPrincipalId: routerIdentity.properties.principalId
    deployerPrincipalId: principalId
    deployerPrincipalType: principalType
    storageAccountName: storage.outputs.name
    routesTableName: routesTableName
    archiveContainerName: archiveContainerName
    eventHubsNamespaceName: eventHubs.outputs.name
    telemetryHubName: telemetryHubName
    twinsHubName: twinsHubName
    egressHubName: egressHubName
    serviceBusNamespaceName: serviceBus.outputs.name
    egressTopicName: egressTopicName
    eventGridTopicName: eventGrid.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
  }
}

module workbook 'app/workbook.bicep' = {
  name: 'workbook'
  params: {
    location: location
    tags: tags
    displayName: 'Event router (${environmentName})'
    applicationInsightsId: monitoring.outputs.applicationInsightsId
  }
}

module alerts 'app/alerts.bicep' = {
  name: 'alerts'
  params: {
    location: location
    tags: tags
    namePrefix: 'router-${environmentName}'
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    lagAlertThresholdSeconds: lagAlertThresholdSeconds
    alertEmail: alertEmail
  }
}

// azd stores these in the environment (`azd env get-values`); docs/DEPLOY.md uses them. No secrets.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_FUNCTION_APP_NAME string = router.outputs.name
output ROUTER_IDENTITY_CLIENT_ID string = routerIdentity.properties.clientId
// The routes CLI signs in with `az login` and finds the deployed table through these two.
output ROUTES_STORAGE__tableServiceUri string = storage.outputs.tableEndpoint
output ROUTES_TABLE string = routesTableName
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
output EGRESS_GRID_TOPIC_ENDPOINT string = eventGrid.outputs.endpoint
