//! Integration tests: real sockets on 127.0.0.1, real upstream servers, the
//! real binary where the process matters. One binary so it links once.

mod admin;
mod admission;
mod balance;
mod dashboard;
mod egress;
mod faults;
mod h2abuse;
mod hardening;
mod kube;
mod pool;
mod process;
mod protocols;
mod proxy;
mod support;
mod swap;
mod tls;
