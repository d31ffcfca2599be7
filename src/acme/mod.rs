//! ACME (RFC 8555) for hecd-haproxy: the account key and its signatures ([`jws`]), the client
//! of one CA ([`client`]), the store's key layout in etcd ([`keys`]) and the pure decisions of
//! which host is ordered for when ([`plan`]). The threads that use them are
//! `consumer::store` (every balancer follows the store) and `consumer::orderer` (one order at
//! a time, under a lock in etcd).

pub mod client;
pub mod jws;
pub mod keys;
pub mod plan;
