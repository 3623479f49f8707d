// Package webhook is consentguard's Salesforce adapter: it turns what
// Salesforce pushes into guard.Update values and writes them to the consent
// store.
//
// Two endpoints are served by Handler:
//
//   - POST /salesforce/outbound: Salesforce Outbound Messaging, SOAP 1.1
//     document/literal (the notifications() call of the outbound messaging
//     WSDL, namespace http://soap.sforce.com/2005/09/outbound, sObject fields
//     in urn:sobject.enterprise.soap.sforce.com). Authenticated by a ?token=
//     query parameter and an OrganizationId allow-list; answered with the
//     notificationsResponse/Ack envelope only after every notification of the
//     POST is durably written.
//   - POST /salesforce/events: JSON records in Salesforce REST shape
//     (attributes.type, field API names) plus deleted Ids, for
//     record-triggered flows and Apex. Authenticated by a bearer token or an
//     HMAC-SHA256 signature over timestamp + "." + body.
//
// Both map fields through a per-object Mapping (DESIGN.md "Config") and
// rely on the store's version compare-and-set for correctness: Salesforce
// delivers at least once and out of order, and notification Ids are only
// remembered to save work.
package webhook
