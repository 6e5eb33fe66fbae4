// Alert rules on the router's metrics in Application Insights: any dead letter, and lag that stays high.
// With an email address they notify through an action group; without one they fire in the portal only.
param location string
param tags object
param namePrefix string
param applicationInsightsId string
param lagAlertThresholdSeconds int
param alertEmail string

// The azd parameters file passes `${ROUTER_ALERT_EMAIL}` through unchanged when it is unset, so only an
// actual address turns email on.
var emailAlerts = contains(alertEmail, '@')

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (emailAlerts) {
  name: '${namePrefix}-email'
  // Action groups are global resources.
  location: 'global'
  tags: tags
  properties: {
    // At most 12 characters: shown as the sender of SMS and email.
    groupShortName: 'router'
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

var actionGroups = emailAlerts ? [actionGroup.id] : []

// Every dead letter is an event the router could not deliver or did not understand: someone should look.
resource deadLetterAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-deadletters'
  location: location
  tags: tags
  properties: {
    displayName: 'Router: dead letters in the last 15 minutes'
    description: 'The router dead-lettered events (router.deadletters > 0). The workbook shows the reasons; the letters are in the deadletters container.'
    severity: 2
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: 'customMetrics | where name == "router.deadletters" | summarize deadLetters = sum(valueSum)'
          timeAggregation: 'Total'
          metricMeasureColumn: 'deadLetters'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    // Resolves by itself once a window passes with no dead letters.
    autoMitigate: true
    actions: {
      actionGroups: actionGroups
    }
  }
}

// router.lag is a histogram; Application Insights keeps one row per export interval (about a minute)
// with its sum, count, min and max, not the individual values. The 95th percentile over those rows'
// means is the closest to "p95 lag" the stored data allows, and it ignores a single slow minute.
resource lagAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-lag'
  location: location
  tags: tags
  properties: {
    displayName: 'Router: lag p95 above ${lagAlertThresholdSeconds} s'
    description: 'The router is falling behind its ingress hubs (p95 of router.lag over 15 minutes). Check failures and throttling in the workbook, and maximumInstanceCount.'
    severity: 2
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: 'customMetrics | where name == "router.lag" and valueCount > 0 | summarize lagP95 = percentile(valueSum / valueCount, 95)'
          timeAggregation: 'Maximum'
          metricMeasureColumn: 'lagP95'
          operator: 'GreaterThan'
          threshold: lagAlertThresholdSeconds
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actionGroups
    }
  }
}
