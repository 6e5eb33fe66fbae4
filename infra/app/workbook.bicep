// The operator's first screen: an Azure Monitor workbook over the router's metrics in Application
// Insights (throughput per endpoint, events in, dead letters by reason, lag, latency, failures, unrouted
// events, route-table refreshes, and endpoint outages: each endpoint's health, what is parked for it, what
// was redelivered or expired). The layout lives in workbook.json, editable in the portal and pasted back.
param location string
param tags object
param displayName string
param applicationInsightsId string

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  // Workbook resource names must be GUIDs; this one is stable per resource group and name.
  name: guid(resourceGroup().id, 'router-workbook', displayName)
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    // The workbook opens under the Application Insights resource and queries it.
    sourceId: applicationInsightsId
    serializedData: loadTextContent('workbook.json')
  }
}

output id string = workbook.id
