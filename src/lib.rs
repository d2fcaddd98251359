//! gatehouse: a Layer-4/7 ingress router for Kubernetes and OpenShift that
//! compiles Routes, Ingresses, Services and EndpointSlices into one immutable
//! routing table and swaps it in atomically, never reloading.
//!
//! Data flows one way: [`source`] → [`model`] (admission) → [`compile`] →
//! [`table`] → [`proxy`]. See DESIGN.md.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod app;
pub mod app_signal;
pub mod balance;
pub mod compile;
pub mod config;
pub mod demo;
pub mod egress;
pub mod io;
pub mod model;
pub mod pool;
pub mod priority;
pub mod proxy;
pub mod source;
pub mod table;
pub mod telemetry;
pub mod tls;
