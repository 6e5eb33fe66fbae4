// Event Grid: the egress topic the shipped routes deliver TopologyOperation and UdfCustom events to, in
// the Event Grid schema (the router's default envelope). The router publishes with its identity
// (EventGridPublisherClient(endpoint, credential)), so access keys are turned off.
param location string
param tags object
param topicName string

resource topic 'Microsoft.EventGrid/topics@2022-06-15' = {
  name: topicName
  location: location
  tags: tags
  // The topic's own identity, for event subscriptions that deliver with it instead of keys.
  identity: {
    type: 'SystemAssigned'
  }
  //checkov:skip=CKV_AZURE_193:Public network access stays on: the Flex app has no VNet integration. Publishing is Entra-only (local auth disabled).
  properties: {
    // Must match the route's format: an EventGridSchema topic refuses CloudEvents and the reverse.
    inputSchema: 'EventGridSchema'
    // Entra only: the topic's access keys and SAS tokens are refused.
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
  }
}

output name string = topic.name
// https://<topic>.<region>-1.eventgrid.azure.net/api/events: what EGRESS_GRID__topicEndpointUri holds.
output endpoint string = topic.properties.endpoint
