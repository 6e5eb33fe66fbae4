// Alert rules on the router's metrics in Application Insights: any dead letter, lag that stays high, an
// endpoint that stays unhealthy (or dead), and parked messages that expired.
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

// Health states as routing/health.py exports them (router.endpoint.state): 2 unhealthy, 3 dead. From
// unhealthy on, the endpoint's circuit is open and its messages are parked: order holds, nothing is lost
// yet, but each parked message's time to live is running.
var unhealthyState = 2

// An endpoint down for 15 minutes is an outage of that destination, not a blip the retries ride out. Every
// instance that sends to an endpoint reports its state each export interval (about a minute); the worst
// instance counts per minute, and the rule fires when even the best of those minutes in the window was
// unhealthy or dead: one good minute (a probe got through) keeps it quiet. One alert per endpoint.
resource endpointUnhealthyAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-endpoint-unhealthy'
  location: location
  tags: tags
  properties: {
    displayName: 'Router: an endpoint unhealthy or dead for 15 minutes'
    description: 'An endpoint has been unhealthy or dead for 15 minutes (router.endpoint.state >= 2): its faults outlasted the retries, its messages are parked in order, and the redelivery probes it with backoff. Fix the endpoint (or its connection); `routing routes status` shows its last error and what is parked. Parked messages expire into dead letters at the time to live of the endpoint.'
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
          query: 'customMetrics | where name == "router.endpoint.state" | extend endpoint = tostring(customDimensions["endpoint"]) | summarize worst = max(valueMax) by endpoint, minute = bin(timestamp, 1m) | summarize state = min(worst) by endpoint'
          timeAggregation: 'Minimum'
          metricMeasureColumn: 'state'
          dimensions: [
            {
              name: 'endpoint'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThanOrEqual'
          threshold: unhealthyState
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    // Resolves by itself once the endpoint answers again (a minute below unhealthy in the window).
    autoMitigate: true
    actions: {
      actionGroups: actionGroups
    }
  }
}

// An expired parked message is dead-lettered (code `expired`) and its key goes on without it: the one way
// order breaks, hence a higher severity than other dead letters. One alert per endpoint.
resource parkedExpiredAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-parked-expired'
  location: location
  tags: tags
  properties: {
    displayName: 'Router: parked messages expired'
    description: 'Messages parked behind an outage of an endpoint outlived its time to live (router.expired > 0) and were dead-lettered with code expired; their keys went on without them, so order broke there. Once the endpoint answers, replay them with `routing deadletters replay --endpoint NAME`; `routing routes status` shows what is still parked.'
    severity: 1
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: 'customMetrics | where name == "router.expired" | extend endpoint = tostring(customDimensions["endpoint"]) | summarize expired = sum(valueSum) by endpoint'
          timeAggregation: 'Total'
          metricMeasureColumn: 'expired'
          dimensions: [
            {
              name: 'endpoint'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
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
