// Event Hubs: the two ingress hubs the router's triggers read (each with the router's own consumer
// group) and the egress hub the shipped routes deliver to.
//
// Telemetry: a dedicated `telemetry` hub that the IoT Hub routes device messages into (an IoT Hub
// message route to an Event Hubs custom endpoint, with identity-based authentication), rather than the
// IoT Hub's built-in Event Hub-compatible endpoint. The built-in endpoint only takes shared access keys,
// so reading it would put a key in the app settings; a hub in this namespace lets the router read with
// its identity, and lets the telemetry partition count and retention be chosen here. Routed messages
// keep their iothub-* system properties, which is what the router recognises telemetry by. To read an
// existing IoT Hub's built-in endpoint instead, set TELEMETRY_HUB_CONNECTION (its connection string)
// and TELEMETRY_HUB_NAME after deployment.
param location string
param tags object
param namespaceName string
param telemetryHubName string
param telemetryPartitionCount int
param twinsHubName string
param twinsPartitionCount int
param egressHubName string
param egressPartitionCount int
param routerConsumerGroupName string

resource namespace 'Microsoft.EventHub/namespaces@2024-01-01' = {
  name: namespaceName
  location: location
  tags: tags
  // Standard: Basic allows only the $Default consumer group, and the router reads with its own.
  sku: {
    name: 'Standard'
    capacity: 1
  }
  properties: {
    // Entra only: SAS keys cannot be used against this namespace.
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    // Throughput units grow with load instead of throttling the router (and IoT Hub) at 1 MB/s.
    isAutoInflateEnabled: true
    maximumThroughputUnits: 4
  }
}

resource telemetryHub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = {
  parent: namespace
  name: telemetryHubName
  properties: {
    partitionCount: telemetryPartitionCount
    // A week (the Standard maximum): the router can stop for a weekend and catch up without losing events.
    messageRetentionInDays: 7
  }
}

resource telemetryRouterGroup 'Microsoft.EventHub/namespaces/eventhubs/consumergroups@2024-01-01' = {
  parent: telemetryHub
  name: routerConsumerGroupName
}

resource twinsHub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = {
  parent: namespace
  name: twinsHubName
  properties: {
    partitionCount: twinsPartitionCount
    messageRetentionInDays: 7
  }
}

resource twinsRouterGroup 'Microsoft.EventHub/namespaces/eventhubs/consumergroups@2024-01-01' = {
  parent: twinsHub
  name: routerConsumerGroupName
}

resource egressHub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = {
  parent: namespace
  name: egressHubName
  properties: {
    partitionCount: egressPartitionCount
    messageRetentionInDays: 7
  }
}

output name string = namespace.name
// `<namespace>.servicebus.windows.net` (or the sovereign cloud's suffix), taken from the endpoint URL.
output fullyQualifiedNamespace string = split(split(namespace.properties.serviceBusEndpoint, '//')[1], ':')[0]
