//! A routes-only change that touches a few hosts: admit and build just the
//! routes of those hosts again; everything else is the previous table's.
//!
//! Why that gives what a full compile would: admission's claims interact
//! only between routes of the same host (the host's namespace, its paths,
//! passthrough against TLS paths), except for wildcard routes, which also
//! claim against the exact hosts of their domain. With no wildcard route in
//! play, the routes claiming the changed routes' old or new hosts are a
//! closed set: admitting them alone gives each the outcome it gets among
//! all. Every other route keeps its entry, certificate and status row.
//!
//! When that argument does not hold cheaply (wildcard routes allowed and
//! present, Ingresses this router serves, many routes changed) this
//! declines and the caller compiles in full; so it does when the
//! certificate cache has grown well past the table (only a full compile
//! drops certificates no route uses).
//!
//! Precondition: `prev` is the table compiled from `prev_objs` (by any
//! compile, scoped ones included), as the compile loop keeps them.

use super::*;
use crate::model::admission::{age_key, claimed_host, RouteStatus};
use crate::model::Route;
use std::collections::HashSet;

/// More changed routes than this in one change: a full compile.
const MAX_CHANGED: usize = 64;

/// The table after a routes-only change from `prev_objs` (which `prev` was
/// compiled from) to `objs`, rebuilding only the hosts the changed routes
/// claimed or claim; None when this change needs a full compile.
pub fn compile_changed_routes(
    prev_objs: &Objects,
    objs: &Objects,
    cfg: &CompileConfig,
    generation: u64,
    prev: &RoutingTable,
) -> Option<Compiled> {
    // Ingress-derived candidates are rebuilt on every compile and can tie
    // with routes in admission order: leave them to the full compile.
    let ours = |o: &Objects| {
        !o.ingresses.is_empty() && !ingress::candidates(o, &cfg.ingress_controller).is_empty()
    };
    if ours(objs) || ours(prev_objs) {
        return None;
    }
    if cfg.cert_cache.len() > 2 * prev.statuses.len() + 64 {
        return None;
    }
    let mut changed: Vec<Key> = Vec::new();
    crate::model::store::diff_keys(&objs.routes, &prev_objs.routes, |k| changed.push(k.clone()));
    if changed.is_empty() || changed.len() > MAX_CHANGED {
        return None;
    }
    changed.sort();
    let policy = &cfg.admission;
    let subdomain = |r: &Route| r.spec.wildcard_policy.as_deref() == Some("Subdomain");
    if policy.allow_wildcard_routes
        && (objs.routes.values().any(|r| subdomain(r))
            || changed
                .iter()
                .filter_map(|k| prev_objs.routes.get(k))
                .any(|r| subdomain(r)))
    {
        return None;
    }
    let shard = |r: &Route| in_shard(objs, &cfg.shard, &r.metadata);

    // The hosts the changed routes claimed before and claim now.
    let mut hosts: Vec<String> = Vec::new();
    for k in &changed {
        for r in [prev_objs.routes.get(k), objs.routes.get(k)]
            .into_iter()
            .flatten()
        {
            if !shard(r) {
                continue;
            }
            if let Some(h) = claimed_host(&Candidate::of(r.clone()), policy) {
                if !hosts.contains(&h) {
                    hosts.push(h);
                }
            }
        }
    }
    // The changed routes (each has a status row, claim or not), then every
    // unchanged route that claims one of those hosts.
    let mut subset: Vec<Candidate> = changed
        .iter()
        .filter_map(|k| objs.routes.get(k))
        .filter(|r| shard(r))
        .map(|r| Candidate::of(r.clone()))
        .collect();
    for keys in hosts.iter().filter_map(|h| prev.claimants.get(h)) {
        for k in keys.iter().filter(|k| changed.binary_search(k).is_err()) {
            match objs.routes.get(k) {
                Some(r) => subset.push(Candidate::of(r.clone())),
                // An unchanged route is in both snapshots: the index does
                // not match `prev_objs`.
                None => return None,
            }
        }
    }
    // In admission's order (age; stable), so its status rows pair with
    // `subset` one for one.
    subset.sort_by(|a, b| age_key(&a.route).cmp(&age_key(&b.route)));

    let certs = tls::CertPass::new(&cfg.cert_cache);
    let Admission {
        admitted,
        mut statuses,
        claimed,
    } = admission::admit_with(&subset, policy, &|c| certs.validate(c));
    let reuse = reusable(
        hosts
            .iter()
            .filter_map(|h| prev.exact.get(h.as_str()))
            .map(|h| (h, false)),
    );
    let mut b = Builder::new(objs, cfg, &certs, reuse);
    for a in &admitted {
        b.add(a, &mut statuses);
    }
    if !b.wildcard.is_empty() {
        // Not reachable with no Subdomain route allowed; never guess.
        return None;
    }
    let Builder {
        cert_map,
        exact,
        by_service,
        diagnostics,
        ..
    } = b;
    certs.finish_partial();

    let mut table = RoutingTable {
        generation,
        ..prev.clone()
    };
    // Out with the affected hosts' entries, certificates and service links.
    let mut services: HashSet<&Key> = HashSet::new();
    let mut old_entries = Vec::new();
    for h in &hosts {
        if let Some(old) = table.exact.remove(h.as_str()) {
            old_entries.push(old);
        }
        table.certs.remove(h.as_str());
    }
    for e in old_entries.iter().flat_map(|h| h.routes.iter()) {
        services.extend(e.targets.iter().map(|t| &t.service));
    }
    let mut index = prev.by_service.clone();
    let affected = |r: &HostRef| matches!(r, HostRef::Exact(k) if hosts.iter().any(|h| **h == **k));
    for s in services {
        if let Some(refs) = index.get_mut(s) {
            let kept: Arc<[HostRef]> = refs.iter().filter(|r| !affected(r)).cloned().collect();
            if kept.is_empty() {
                index.remove(s);
            } else {
                *refs = kept;
            }
        }
    }
    // In with the rebuilt ones.
    for (s, refs) in by_service {
        let v = index.entry(Arc::new(s)).or_insert_with(|| Arc::from([]));
        let mut all: Vec<HostRef> = v.iter().cloned().chain(refs).collect();
        all.sort();
        all.dedup();
        *v = all.into();
    }
    table.by_service = index;
    // Who claims the affected hosts now.
    for h in &hosts {
        table.claimants.remove(h);
    }
    table.claimants.extend(claimants(&statuses, &claimed));
    table
        .exact
        .extend(exact.into_iter().map(|(k, v)| (k, host_routes(v))));
    table.certs.extend(cert_map);

    // Status rows: the previous ones but the subset's and the changed
    // routes', then the subset's new rows, each where its age puts it.
    // Rows are in admission order (age, unique: it ends in namespace and
    // name), so each is found by binary search; the other rows are never
    // touched (at 10k routes, walking them was most of a change's CPU).
    fn age_in<'o>(o: &'o Objects, s: &RouteStatus) -> Option<(&'o str, &'o str, &'o str, &'o str)> {
        o.routes
            .get(&(s.namespace.clone(), s.name.clone()))
            .map(|r| age_key(r))
    }
    let mut rows = prev.statuses.clone();
    let mut admitted_routes = prev.admitted_routes;
    let leaving = changed
        .iter()
        .filter_map(|k| prev_objs.routes.get(k))
        .chain(subset.iter().map(|c| &c.route));
    for r in leaving {
        let key = Some(age_key(r));
        // `prev` was compiled from `prev_objs`: its rows sort by their age
        // there. A route with no row (outside the shard) is not found.
        if let Ok(at) = rows.binary_search_by(|s| age_in(prev_objs, s).cmp(&key)) {
            let row = rows.remove(at);
            admitted_routes = admitted_routes.saturating_sub(usize::from(row.admitted));
        }
    }
    for (row, c) in statuses.into_iter().zip(&subset) {
        let key = Some(age_key(&c.route));
        // Every kept row is an unchanged route's (the precondition), in
        // `objs` too; a row without one would sort first rather than panic.
        let at = match rows.binary_search_by(|s| age_in(objs, s).cmp(&key)) {
            Ok(at) | Err(at) => at,
        };
        admitted_routes += usize::from(row.admitted);
        rows.insert(at, Arc::new(row));
    }
    table.statuses = rows;
    table.admitted_routes = admitted_routes;
    Some(Compiled {
        table,
        diagnostics,
        renewed: changed
            .iter()
            .map(|(ns, name)| route_object(ns, name))
            .collect(),
    })
}
