//! The applier: carries out the model's operations ([`Op`]) over HAProxy's runtime API, in the
//! order the plan gives them, and hands each result back to the model
//! ([`Balancer::applied`]). It decides nothing; the main loop calls [`Applier::pass`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use super::services::{Balancer, Op};
use crate::haproxy::{Runtime, RuntimeError};

pub struct Applier {
    pub runtime: Runtime,
    /// `check ...` options for `add server`.
    check: String,
    /// The routes map file HAProxy reads.
    map: PathBuf,
}

impl Applier {
    pub fn new(runtime: Runtime, check: String, map: PathBuf) -> Self {
        Self {
            runtime,
            check,
            map,
        }
    }

    /// Carries out one operation.
    pub fn apply(&self, op: &Op) -> Result<(), RuntimeError> {
        let r = &self.runtime;
        match op {
            Op::Add {
                backend,
                name,
                addr,
                ..
            } => r.add(backend, name, addr, &self.check),
            Op::Move {
                backend,
                name,
                addr,
                ready,
                ..
            } => r.readdress(backend, name, addr).and_then(|()| {
                if *ready {
                    r.ready(backend, name)
                } else {
                    Ok(())
                }
            }),
            Op::Ready { backend, name, .. } => r.ready(backend, name),
            Op::Drain { backend, name, .. } => r.drain(backend, name),
            Op::Delete {
                backend,
                name,
                force,
                ..
            } => r.delete(backend, name, *force),
            Op::MapSet {
                key,
                backend,
                exists,
            } => r.map_set(&self.map, key, backend, *exists),
            Op::MapDel { key } => r.map_del(&self.map, key),
            // Bookkeeping of the model, and the caller's job.
            Op::Release { .. } | Op::Reload(_) => Ok(()),
        }
    }

    /// Carries out `ops` in order, each result into the model. Returns whether HAProxy
    /// changed, and the reload the plan asked for, if it did.
    fn run(&self, balancer: &mut Balancer, ops: Vec<Op>) -> (bool, Option<String>) {
        let mut changed = false;
        for op in ops {
            if let Op::Reload(why) = op {
                return (changed, Some(why));
            }
            let result = self.apply(&op);
            changed |= balancer.applied(&op, result, Instant::now());
        }
        (changed, None)
    }

    /// One pass: the plan carried out, then the drains finished (HAProxy's connections are
    /// read only while a server drains). Returns whether HAProxy changed (the files follow)
    /// and why it must be reloaded, if it must.
    pub fn pass(&self, balancer: &mut Balancer) -> (bool, Option<String>) {
        let ops = balancer.plan();
        let (mut changed, reload) = self.run(balancer, ops);
        if reload.is_some() {
            return (changed, reload);
        }
        if balancer.draining() {
            match self.runtime.connections() {
                Ok(in_use) => {
                    let ops = balancer.finish(Instant::now(), &in_use);
                    changed |= self.run(balancer, ops).0;
                }
                Err(e) => log::warn!("cannot read HAProxy's connections: {e}"),
            }
        }
        (changed, balancer.needs_reload.take())
    }

    /// Reads back what HAProxy has after a (re)start or reload into the model.
    pub fn load(&self, balancer: &mut Balancer) -> Result<(), RuntimeError> {
        let servers = self.runtime.servers()?;
        let routes: BTreeMap<String, String> = self.runtime.map_entries(&self.map)?;
        balancer.loaded(servers, routes);
        Ok(())
    }
}
