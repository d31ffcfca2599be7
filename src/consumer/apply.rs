//! The applier: carries out the model's operations ([`Op`]) over HAProxy's runtime API, in the
//! order the plan gives them, and hands each result back to the model
//! ([`Balancer::applied`]). It decides nothing; the main loop calls [`Applier::pass`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::certs::{CertOp, Certs};
use super::services::{Balancer, Op};
use crate::haproxy::{Runtime, RuntimeError};

/// The files HAProxy reads the certificates and their maps from.
pub struct CertFiles {
    pub crt_list: PathBuf,
    pub hosts: PathBuf,
    pub answers: PathBuf,
}

impl CertFiles {
    pub fn of(frontend: &crate::haproxy::Frontend) -> Self {
        Self {
            crt_list: frontend.crt_list_path(),
            hosts: frontend.hosts_map_path(),
            answers: frontend.answers_map_path(),
        }
    }
}

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
            Op::MapSet { key, backend } => r.map_set(&self.map, key, backend),
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
        if balancer.stale && !self.read_back(balancer) {
            return (false, None);
        }
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

    /// Reads back what HAProxy has (after a start, or while the model is stale); when it
    /// cannot, the model stays stale and the next pass runs and tries again before it plans.
    pub fn read_back(&self, balancer: &mut Balancer) -> bool {
        match self.load(balancer) {
            Ok(()) => true,
            Err(e) => {
                log::warn!("cannot read HAProxy's servers back: {e}; trying again");
                balancer.stale = true;
                balancer.retry = true;
                false
            }
        }
    }

    /// Carries out one certificate operation. A certificate's copy is written (mode 0600)
    /// before HAProxy is told of it, so the crt-list file can name it at any time.
    pub fn apply_cert(&self, op: &CertOp, files: &CertFiles) -> Result<(), RuntimeError> {
        let r = &self.runtime;
        match op {
            CertOp::Load {
                path, pem, names, ..
            } => {
                write_private(path, pem).map_err(RuntimeError::Refused)?;
                r.cert_load(&files.crt_list, path, pem, names)
            }
            CertOp::Unload { path } => r.cert_unload(&files.crt_list, path),
            CertOp::HostAdd { name } => r.map_set(&files.hosts, name, "1"),
            CertOp::HostDel { name } => r.map_del(&files.hosts, name),
            CertOp::AnswerSet { token, answer } => r.map_set(&files.answers, token, answer),
            CertOp::AnswerDel { token } => r.map_del(&files.answers, token),
        }
    }

    /// One pass over the certificates: the challenges' answers, new certificates loaded, the
    /// hosts map made equal to what is served, old certificates removed, in that order.
    /// Whether HAProxy changed.
    pub fn pass_certs(&self, certs: &mut Certs, files: &CertFiles) -> bool {
        let mut changed = false;
        for step in Certs::STEPS {
            for op in step(certs) {
                let result = self.apply_cert(&op, files);
                changed |= certs.applied(&op, result);
            }
        }
        changed
    }

    /// Reads back what HAProxy has after a (re)start or reload into the model.
    pub fn load(&self, balancer: &mut Balancer) -> Result<(), RuntimeError> {
        let servers = self.runtime.servers()?;
        let routes: BTreeMap<String, String> = self.runtime.map_entries(&self.map)?;
        balancer.loaded(servers, routes);
        Ok(())
    }
}

/// Writes `text` to `path` readable by its owner only (a private key is in it), atomically.
pub fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).map_err(fail)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::follow::Update;
    use crate::haproxy::Addr;
    use std::time::Duration;

    /// While what HAProxy has is not known (a read-back failed), a pass reads it first; when
    /// it still cannot, it plans nothing (a new service gets no backend) and asks to run again.
    #[test]
    fn a_stale_model_is_read_back_before_anything_is_planned() {
        let mut b = Balancer::new(Duration::from_secs(30), "/app/servers".into(), &[]);
        let servers = BTreeMap::from([("x1".to_owned(), Addr::parse("10.0.0.1:80").unwrap())]);
        b.update(Update::Snapshot {
            services: BTreeMap::from([("/app/x".to_owned(), servers)]),
            declarations: BTreeMap::new(),
        });
        let nowhere = Runtime::new(Path::new("/nonexistent/runtime-1.sock"));
        let applier = Applier::new(nowhere, String::new(), PathBuf::from("/nonexistent/map"));
        b.stale = true;
        assert_eq!(applier.pass(&mut b), (false, None));
        assert!(b.stale && b.retry);
        assert_eq!(b.services["/app/x"].backend, None);
        // Known again: the same pass plans (the service takes a pool backend).
        b.stale = false;
        b.retry = false;
        applier.pass(&mut b);
        assert_eq!(b.services["/app/x"].backend.as_deref(), Some("pool-1"));
    }
}
