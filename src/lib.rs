//! The code of both programs this project ships: `hecd-init` (PID 1 of a container that
//! registers it in etcd; `src/main.rs`) and `hecd-haproxy` (the balancer that keeps HAProxy's
//! backends, routes and listeners equal to the keys and supervises HAProxy;
//! `src/bin/hecd-haproxy.rs`). They share the etcd client, the HTTP client, the option scanner,
//! the contract of names, addresses and key layouts, the raw system calls and the logger.
//! Linux only.
#![deny(unsafe_code)]

pub mod access;
pub mod acme;
pub mod check;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod contract;
pub mod discovery;
pub mod entry;
pub mod error;
pub mod etcd;
pub mod exit;
pub mod file;
#[cfg(test)]
mod fuzz;
pub mod haproxy;
pub mod http;
pub mod json;
pub mod lifecycle;
pub mod logging;
pub mod options;
pub mod registrar;
pub mod signal;
pub mod supervisor;
pub mod sys;
pub mod user;
