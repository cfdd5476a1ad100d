//! Black-box fixtures: the real `tokentap` binary as a child process, wire-level
//! clients, and a scripted upstream that misbehaves on purpose.
//!
//! Nothing here links tokentap's library: the hostile-input suites must keep
//! testing the shipped binary whatever its insides become, so every fact is
//! read from the wire, `/metrics`, stdout/stderr or `/proc`.
#![allow(dead_code)]

pub mod child;
pub mod upstream;
pub mod wire;
