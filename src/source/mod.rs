//! Where desired objects come from. A source publishes complete `Objects`
//! snapshots on a watch channel; it never compiles and never touches the
//! data path.

pub mod kube;
pub mod kube_status;
pub mod manifests;
