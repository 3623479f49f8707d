// Sends every change and deletion of a Contact to consentguard's JSON endpoint
// (signed; see ConsentguardEvents and README.md, section 3.3).
trigger ConsentguardContact on Contact (after insert, after update, after delete, after undelete) {
    if (Trigger.isDelete) {
        ConsentguardEvents.enqueue('Contact', null, new Map<Id, Contact>(Trigger.old).keySet());
    } else {
        ConsentguardEvents.enqueue('Contact', Trigger.newMap.keySet(), null);
    }
}
