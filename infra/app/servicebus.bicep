// Service Bus: the egress topic the shipped routes deliver SensorChange and SpaceChange events to, and a
// session-enabled subscription so a consumer receives each object's events in order (the router sets
// the session id to the order key).
param location string
param tags object
param namespaceName string
param topicName string
param subscriptionName string

resource namespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: namespaceName
  location: location
  tags: tags
  // Standard: Basic has no topics.
  sku: {
    name: 'Standard'
  }
  properties: {
    // Entra only: SAS keys cannot be used against this namespace.
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
  }
}

resource topic 'Microsoft.ServiceBus/namespaces/topics@2022-10-01-preview' = {
  parent: namespace
  name: topicName
  properties: {
    // The router's message ids are deterministic (hub, partition, sequence number), so a batch the
    // Functions retry policy sends again is dropped here instead of reaching consumers twice. The window
    // covers the retry policy's 5-minute maximum backoff with room for an instance restart.
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT1H'
    maxSizeInMegabytes: 1024
    defaultMessageTimeToLive: 'P7D'
  }
}

resource subscription 'Microsoft.ServiceBus/namespaces/topics/subscriptions@2022-10-01-preview' = {
  parent: topic
  name: subscriptionName
  properties: {
    // One session per order key (device or object id): each key's messages arrive in order.
    requiresSession: true
    maxDeliveryCount: 10
    // Expired messages go to the subscription's dead-letter queue instead of disappearing.
    deadLetteringOnMessageExpiration: true
    lockDuration: 'PT1M'
  }
}

output name string = namespace.name
output fullyQualifiedNamespace string = split(split(namespace.properties.serviceBusEndpoint, '//')[1], ':')[0]
