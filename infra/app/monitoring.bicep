// Log Analytics and workspace-based Application Insights. Ingestion takes Entra tokens only: the app
// sends telemetry with its identity (APPLICATIONINSIGHTS_AUTHENTICATION_STRING, Monitoring Metrics
// Publisher in rbac.bicep), so there is no instrumentation key anyone could use to write fake data.
param location string
param tags object
param logAnalyticsName string
param applicationInsightsName string

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    // 30 days is the free retention; dead letters themselves live in Blob Storage, not here.
    retentionInDays: 30
  }
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    // Entra-only ingestion: the connection string alone no longer lets anyone send telemetry.
    DisableLocalAuth: true
  }
}

output applicationInsightsId string = applicationInsights.id
output applicationInsightsName string = applicationInsights.name
// A connection string is not a secret once local auth is off: it names the endpoint, it grants nothing.
output applicationInsightsConnectionString string = applicationInsights.properties.ConnectionString
