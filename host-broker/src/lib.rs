//! courier-host-broker: the actor runtime (actors, mailboxes, routing, supervision).
