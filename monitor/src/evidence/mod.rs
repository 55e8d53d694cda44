//! Evidence bundles: building one from the store for a time window
//! (`bundle`), the auditor's pages (`summary`, and `report`: report.html), the node key (`key`), and
//! reading a bundle's archive (`archive`) and checking a bundle (`verify`).
pub mod archive;
pub mod bundle;
pub mod fleet;
pub mod key;
pub mod report;
pub mod summary;
pub mod verify;

#[cfg(test)]
mod tests;
