// Sends every change and deletion of a Lead to consentguard's JSON endpoint
// (signed; see ConsentguardEvents and README.md, section 3.3).
trigger ConsentguardLead on Lead (after insert, after update, after delete, after undelete) {
    if (Trigger.isDelete) {
        ConsentguardEvents.enqueue('Lead', null, new Map<Id, Lead>(Trigger.old).keySet());
    } else {
        ConsentguardEvents.enqueue('Lead', Trigger.newMap.keySet(), null);
    }
}
