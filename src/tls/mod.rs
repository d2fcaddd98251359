//! TLS on the router's :443: certificates by SNI from the live table, edge
//! and re-encrypt termination, passthrough by SNI without termination, and
//! client certificates.
//!
//! Owns rustls configuration and the ClientHello peek; routing decisions
//! still come from the table.

pub mod certs;
pub mod client_hello;
pub mod listener;
mod prefixed;
pub mod server;

pub use prefixed::PrefixedIo;
