//! Plain data and pure rules: the objects, the store of desired state, the
//! OpenShift admission rules and the annotation syntax.
//!
//! Nothing here touches tokio, sockets or files; every rule is unit-tested
//! with plain values.

pub mod admission;
pub mod duration;
pub mod host;
pub mod ingress;
pub mod ipnet;
pub mod objects;
pub mod parse;
pub mod selector;
pub mod store;

pub use objects::*;
pub use store::{Key, Objects};
