// The one storage account: Functions host storage (leases, Event Hubs checkpoints), the Flex
// deployment package, the dead letters (blobs), the Storage endpoint's archive and the routes table. Shared keys are off: the app, the
// platform and the routes CLI all sign in with Entra identities.
param location string
param tags object
// 3-24 lowercase letters and digits, globally unique: main.bicep builds it from 'st' and the resource token.
@minLength(3)
@maxLength(24)
param storageAccountName string
param deploymentContainerName string
param deadLetterContainerName string
param archiveContainerName string
param routesTableName string

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: storageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  //checkov:skip=CKV_AZURE_43:The name is the storageAccountName parameter ('st' + uniqueString(...), lowercase letters and digits); checkov reads the parameter's identifier instead of its value.
  sku: {
    // Zone-redundant: the routes and dead letters survive a zone outage. Geo-redundancy is left out
    // because the routes can be re-imported from their file and the event hubs are regional anyway.
    name: 'Standard_ZRS'
  }
  //checkov:skip=CKV_AZURE_206:ZRS is chosen on purpose (see the sku comment): the router and its hubs are regional, so a geo copy of its state would not keep it running.
  //checkov:skip=CKV_AZURE_35:Flex Consumption without VNet integration reaches storage over its public endpoint; access is Entra-only (no shared keys) instead of network-restricted.
  //checkov:skip=CKV_AZURE_59:Same reason as CKV_AZURE_35: the app has no VNet integration, so the public endpoint must stay reachable; shared keys are disabled.
  properties: {
    supportsHttpsTrafficOnly: true
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    // Flex Consumption deploys from and runs on identity-based storage, so no key is ever needed.
    allowSharedKeyAccess: false
    // The portal's storage browser then uses the signed-in user's Entra identity, as everything else does.
    defaultToOAuthAuthentication: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storageAccount
  name: 'default'
  properties: {
    // A dead letter deleted by mistake can be restored for a week.
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deadLetterContainerName
  properties: {
    publicAccess: 'None'
  }
}

// The shipped routes' Storage endpoint writes here. Made by the deployment because the router never
// creates an endpoint's container (IoT Hub does not either): a missing one dead-letters, naming it.
resource archiveContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: archiveContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storageAccount
  name: 'default'
}

// Created here so the router (which only reads it) and the routes CLI find it on the first run.
resource routesTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: routesTableName
}

output name string = storageAccount.name
output blobEndpoint string = storageAccount.properties.primaryEndpoints.blob
output tableEndpoint string = storageAccount.properties.primaryEndpoints.table
