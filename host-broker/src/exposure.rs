//! Whether other hosts may reach a component: a plain value that a spec, an entry and a
//! lattice all read, so it sits at the bottom.

/// Whether other hosts may reach a component ([`ComponentSpec::expose`](crate::ComponentSpec::expose)).
///
/// Deny by default: a component is reachable only from its own host unless its spec says
/// otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Exposure {
    /// Only components and the host on this host reach it.
    #[default]
    Local,
    /// Other hosts reach it too. Its id is served by this host alone: a lattice refuses to
    /// serve an id another host already serves.
    Lattice,
    /// Other hosts reach it, and other hosts may serve the same id: each message goes to
    /// one of them. Per-sender order is not kept across replicas.
    Replicated,
}
