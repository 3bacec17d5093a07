//! courier-host-store's tests: real redb files in temporary folders, and real child processes
//! for the crashes, the locks and the full disk.

mod bounds;
mod crash;
mod full;
mod group_commit;
mod refusals;
mod round_trip;
mod support;
