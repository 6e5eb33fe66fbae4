// Role assignments: what the router's identity may do, each on the narrowest scope that works, and the
// one grant the deploying principal needs to manage routes with the CLI. No role is wider than a single
// hub, topic or table, except blob access, which the Functions host needs account-wide (it creates its
// own azure-webjobs-* containers).
param routerPrincipalId string
param deployerPrincipalId string
param deployerPrincipalType string
param storageAccountName string
param routesTableName string
param archiveContainerName string
param eventHubsNamespaceName string
param telemetryHubName string
param twinsHubName string
param egressHubName string
param serviceBusNamespaceName string
param egressTopicName string
param eventGridTopicName string
param applicationInsightsName string

// Built-in role definition ids (the same in every tenant).
var eventHubsDataReceiverRoleId = 'a638d3c7-ab3a-418d-83e6-5f17a39d4fde' // Azure Event Hubs Data Receiver
var eventHubsDataSenderRoleId = '2b629674-e913-4c01-ae53-ef4638d8f975' // Azure Event Hubs Data Sender
var serviceBusDataSenderRoleId = '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39' // Azure Service Bus Data Sender
var eventGridDataSenderRoleId = 'd5a91429-5739-47e2-a06b-3470a27159e7' // EventGrid Data Sender
var storageTableDataContributorRoleId = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // Storage Table Data Contributor
var storageBlobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // Storage Blob Data Owner
var storageBlobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe' // Storage Blob Data Contributor
var monitoringMetricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb' // Monitoring Metrics Publisher

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' existing = {
  parent: storageAccount
  name: 'default'
}

resource routesTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' existing = {
  parent: tableService
  name: routesTableName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: storageAccount
  name: 'default'
}

resource archiveContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: archiveContainerName
}

resource eventHubsNamespace 'Microsoft.EventHub/namespaces@2024-01-01' existing = {
  name: eventHubsNamespaceName
}

resource telemetryHub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' existing = {
  parent: eventHubsNamespace
  name: telemetryHubName
}

resource twinsHub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' existing = {
  parent: eventHubsNamespace
  name: twinsHubName
}

resource egressHub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' existing = {
  parent: eventHubsNamespace
  name: egressHubName
}

resource serviceBusNamespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' existing = {
  name: serviceBusNamespaceName
}

resource egressTopic 'Microsoft.ServiceBus/namespaces/topics@2022-10-01-preview' existing = {
  parent: serviceBusNamespace
  name: egressTopicName
}

resource eventGridTopic 'Microsoft.EventGrid/topics@2022-06-15' existing = {
  name: eventGridTopicName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// The triggers read the two ingress hubs (and their partition metadata, which Receiver includes).
resource telemetryHubReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(telemetryHub.id, routerPrincipalId, eventHubsDataReceiverRoleId)
  scope: telemetryHub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventHubsDataReceiverRoleId)
    principalId: routerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource twinsHubReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(twinsHub.id, routerPrincipalId, eventHubsDataReceiverRoleId)
  scope: twinsHub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventHubsDataReceiverRoleId)
    principalId: routerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Egress: send only, and only to the entities the shipped routes deliver to.
resource egressHubSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(egressHub.id, routerPrincipalId, eventHubsDataSenderRoleId)
  scope: egressHub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventHubsDataSenderRoleId)
    principalId: routerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource egressTopicSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(egressTopic.id, routerPrincipalId, serviceBusDataSenderRoleId)
  scope: egressTopic
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataSenderRoleId)
    principalId: routerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource eventGridSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(eventGridTopic.id, routerPrincipalId, eventGridDataSenderRoleId)
  scope: eventGridTopic
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventGridDataSenderRoleId)
    principalId: routerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The Storage endpoint writes (and overwrites, on a retried batch) blobs in its container, and nothing
// else: Contributor on that container alone. The account-wide Owner grant below covers it today; this one
// is what a Storage endpoint needs, and keeps it working when its container moves to an account of its
// own (grant the same role there) or the host's grant is narrowed.
resource archiveContainerContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(archiveContainer.id, routerPrincipalId, storageBlobDataContributorRoleId)
  scope: archiveContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributorRoleId)
    principalId: routerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The routes table only. Contributor rather than Reader so a route store that writes back (for example
// to record a refresh) keeps working; the router never needs any other table.
resource routesTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(routesTable.id, routerPrincipalId, storageTableDataContributorRoleId)
  scope: routesTable
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributorRoleId)
    principalId: routerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Blob Data Owner on the account: the Functions host with an identity needs Owner (it creates and leases
// its azure-webjobs-* containers, which do not exist before the first start); the same grant covers the
// Flex deployment container and the dead-letter container. No queue or file role: nothing uses them.
resource storageBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, routerPrincipalId, storageBlobDataOwnerRoleId)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwnerRoleId)
    principalId: routerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Application Insights refuses telemetry without an Entra token carrying this role (local auth is off).
resource applicationInsightsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, routerPrincipalId, monitoringMetricsPublisherRoleId)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)
    principalId: routerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The deploying principal edits routes with `python -m routing routes ...` after `az login`.
resource deployerRoutesTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerPrincipalId)) {
  name: guid(routesTable.id, deployerPrincipalId, storageTableDataContributorRoleId)
  scope: routesTable
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributorRoleId)
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
  }
}
