//! `/metrics`: everything the router counts, encoded with `prometheus-client`
//! (Prometheus text format 0.0.4) from the atomics the request path keeps.
//! A collector reads them on each scrape, so counting costs the request
//! path no lock and no label lookup.
//!
//! Cardinality is bounded by the cluster's objects, never by clients or
//! paths: labels are namespace/route, namespace/service/endpoint, listener,
//! reason and kind. Per-route series appear once a route has served a
//! request; per-endpoint series once an endpoint has served or failed.
//! Every metric is listed in the README.

use super::AdminState;
use crate::table::{UpstreamError, STICKY_LABELS};
use crate::telemetry::metrics::{self as m, Histogram, TlsRefusal};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// The registry the admin listener encodes on every scrape.
pub fn registry(state: Arc<AdminState>) -> Registry {
    let mut r = Registry::with_prefix("gatehouse");
    r.register_collector(Box::new(RouterCollector(state)));
    r
}

/// Render the whole exposition.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    if prometheus_client::encoding::prometheus_text::encode(&mut out, registry).is_err() {
        out.push_str("# encoding failed\n");
    }
    out
}

#[derive(Debug)]
struct RouterCollector(Arc<AdminState>);

/// Shorthands over the descriptor encoder.
struct Out<'a>(DescriptorEncoder<'a>);

type Labels<'a> = Vec<(&'static str, &'a str)>;

impl Out<'_> {
    fn counter(&mut self, name: &str, help: &str, v: u64) -> fmt::Result {
        self.0
            .encode_descriptor(name, help, None, MetricType::Counter)?
            .encode_counter::<NoLabelSet, u64, u64>(&v, None)
    }

    fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        v: V,
    ) -> fmt::Result {
        self.0
            .encode_descriptor(name, help, None, MetricType::Gauge)?
            .encode_gauge(&v)
    }

    fn counters<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (L, u64)>,
    ) -> fmt::Result {
        let mut e = self
            .0
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (l, v) in rows {
            e.encode_family(&l)?
                .encode_counter::<NoLabelSet, u64, u64>(&v, None)?;
        }
        Ok(())
    }

    fn gauges<L: EncodeLabelSet, V: prometheus_client::encoding::EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (L, V)>,
    ) -> fmt::Result {
        let mut e = self
            .0
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (l, v) in rows {
            e.encode_family(&l)?.encode_gauge(&v)?;
        }
        Ok(())
    }

    fn histograms<'h, L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (L, &'h Histogram)>,
    ) -> fmt::Result {
        let mut e = self
            .0
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (l, h) in rows {
            let (sum, count, buckets) = h.snapshot();
            e.encode_family(&l)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

impl Collector for RouterCollector {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let state = &self.0;
        let mut o = Out(encoder);
        let t = state.store.load_full();

        // The table.
        let admitted = t.statuses.iter().filter(|s| s.admitted).count() as i64;
        let rejected = t.statuses.len() as i64 - admitted;
        o.gauge(
            "ready",
            "1 once the first complete table is live.",
            i64::from(state.store.is_ready()),
        )?;
        o.gauge(
            "table_generation",
            "Generation of the live routing table.",
            t.generation as i64,
        )?;
        o.gauges(
            "routes",
            "Routes by admission state.",
            [
                (vec![("state", "admitted")], admitted),
                (vec![("state", "rejected")], rejected),
            ],
        )?;
        let mut reasons: Vec<(String, i64)> = Vec::new();
        for s in t.statuses.iter().filter(|s| !s.admitted) {
            let r = s
                .reason
                .as_ref()
                .map_or_else(|| "Unknown".to_owned(), |r| format!("{r:?}"));
            match reasons.iter_mut().find(|(k, _)| *k == r) {
                Some((_, n)) => *n += 1,
                None => reasons.push((r, 1)),
            }
        }
        reasons.sort();
        o.gauges(
            "routes_rejected",
            "Rejected routes by reason (HostAlreadyClaimed, ExtendedValidationFailed, …).",
            reasons
                .iter()
                .map(|(r, n)| (vec![("reason", r.as_str())], *n)),
        )?;
        let tb = &m::TABLE;
        o.counters(
            "table_compiles",
            "Tables compiled and swapped in, by kind (full, endpoints only, or only the hosts of changed routes).",
            m::CompileKind::ALL
                .map(|k| (vec![("kind", k.as_str())], tb.compiles[k as usize].load(Relaxed))),
        )?;
        o.counter(
            "table_compile_failures",
            "Compiles that failed; the previous table stayed live.",
            tb.failures.load(Relaxed),
        )?;
        o.histograms(
            "table_compile_duration_seconds",
            "Time from a source change to the new table being live (compile and swap).",
            [(NoLabels, tb.compile_histogram())],
        )?;
        o.gauge(
            "table_last_compile_seconds",
            "How long the last compile took.",
            tb.last_compile_us.load(Relaxed) as f64 / 1e6,
        )?;
        o.gauge(
            "table_last_swap_timestamp_seconds",
            "Unix time the live table was last swapped.",
            tb.last_swap_ms.load(Relaxed) as f64 / 1e3,
        )?;
        o.gauge(
            "source_last_change_timestamp_seconds",
            "Unix time the source (manifests or API server) last changed what the router serves.",
            tb.last_change_ms.load(Relaxed) as f64 / 1e3,
        )?;
        match &state.source {
            Some(h) => source(&mut o, h)?,
            None => o.gauge(
                "source_synced",
                "1 once the source has been read completely.",
                i64::from(state.store.is_ready()),
            )?,
        }

        // Listeners and TLS.
        o.counters(
            "listener_connections",
            "Client connections accepted, by listener.",
            [
                (vec![("listener", "http")], m::HTTP.accepted.load(Relaxed)),
                (vec![("listener", "https")], m::HTTPS.accepted.load(Relaxed)),
            ],
        )?;
        o.gauges(
            "listener_active_connections",
            "Client connections open now, by listener.",
            [
                (vec![("listener", "http")], m::HTTP.active.load(Relaxed)),
                (vec![("listener", "https")], m::HTTPS.active.load(Relaxed)),
            ],
        )?;
        o.counter(
            "tls_handshakes",
            "TLS handshakes completed on the HTTPS listener (edge and re-encrypt routes).",
            m::TLS_HANDSHAKES.load(Relaxed),
        )?;
        o.counters(
            "tls_handshake_failures",
            "HTTPS connections closed before serving anything, by reason.",
            TlsRefusal::LABELS
                .iter()
                .zip(m::TLS_FAILURES.iter())
                .map(|(l, v)| (vec![("reason", *l)], v.load(Relaxed))),
        )?;
        o.counters(
            "connections_refused",
            "Client connections closed at accept for being over a cap: max_connections, or max_connections_per_source.",
            [
                (vec![("reason", "max_connections")], crate::proxy::conn_limits::REFUSED[0].load(Relaxed)),
                (vec![("reason", "per_source")], crate::proxy::conn_limits::REFUSED[1].load(Relaxed)),
            ],
        )?;
        o.counter(
            "proxy_header_refused",
            "Connections from trusted balancers closed for a bad or missing PROXY protocol header.",
            m::PROXY_HEADER_REFUSED.load(Relaxed),
        )?;
        o.gauge(
            "parked_connections",
            "Idle HTTP/1 keep-alive connections holding no buffers (parked until their next request).",
            crate::proxy::conn::PARKED.load(Relaxed) as i64,
        )?;
        o.counter(
            "connections_closed_for_cancels",
            "Client connections closed for cancelling most of their requests (HTTP/2 rapid reset).",
            crate::proxy::CLOSED_FOR_CANCELS.load(Relaxed),
        )?;
        o.counter(
            "passthrough_connections",
            "Connections spliced to passthrough routes' endpoints.",
            m::PASSTHROUGH_CONNECTIONS.load(Relaxed),
        )?;
        o.counter(
            "unrouted_requests",
            "Requests for hosts no route serves (answered 503).",
            crate::proxy::UNROUTED.load(Relaxed),
        )?;
        o.counter(
            "access_log_dropped",
            "Access log lines dropped because the queue to stdout was full (requests are never slowed).",
            crate::telemetry::access_log::DROPPED.load(Relaxed),
        )?;
        o.counter(
            "endpoints_dropped",
            "Endpoint addresses dropped because they are loopback, link-local, multicast or cloud metadata addresses (untrusted sources only).",
            crate::compile::DROPPED_LOCAL_ENDPOINTS.load(Relaxed),
        )?;

        // Routes that have seen traffic, each once.
        let mut routes: Vec<_> = t
            .routes()
            .filter(|r| r.stats.total() > 0 || r.stats.active.load(Relaxed) > 0)
            .collect();
        routes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        routes.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
        let id = route_labels;
        o.counters(
            "route_requests",
            "Requests per route by status class.",
            routes.iter().flat_map(|r| {
                r.stats
                    .snapshot()
                    .into_iter()
                    .map(move |(c, n)| (with(r, "code", c), n))
            }),
        )?;
        o.counters(
            "route_bytes_in",
            "Request body bytes received from clients, per route.",
            routes
                .iter()
                .map(|r| (id(r), r.stats.bytes_in.load(Relaxed))),
        )?;
        o.counters(
            "route_bytes_out",
            "Response body bytes sent to clients, per route.",
            routes
                .iter()
                .map(|r| (id(r), r.stats.bytes_out.load(Relaxed))),
        )?;
        o.gauges(
            "route_active_requests",
            "Requests in progress per route (until the response body is done).",
            routes.iter().map(|r| (id(r), r.stats.active.load(Relaxed))),
        )?;
        o.histograms(
            "route_request_duration_seconds",
            "Time from the request head to the end of the response body, per route.",
            routes.iter().map(|r| (id(r), &r.stats.duration)),
        )?;
        o.histograms(
            "route_upstream_connect_seconds",
            "Time to open a new upstream connection (TCP, and TLS for re-encrypt), per route. Pooled connections are not counted.",
            routes.iter().map(|r| (id(r), &r.stats.connect)),
        )?;
        o.counters(
            "route_upstream_errors",
            "Failed upstream exchanges per route by kind: connect, tls, closed (before the response), timeout, body (mid-response).",
            routes.iter().flat_map(|r| {
                UpstreamError::LABELS
                    .iter()
                    .zip(r.stats.errors.iter())
                    .map(move |(k, v)| (with(r, "kind", k), v.load(Relaxed)))
            }),
        )?;
        o.counters(
            "route_retries",
            "Requests sent again (another endpoint, or a fresh connection after a stale pooled one), per route.",
            routes.iter().map(|r| (id(r), r.stats.retries.load(Relaxed))),
        )?;
        o.counters(
            "route_sticky",
            "Sticky-cookie decisions on cookie routes: hit (the cookie's endpoint served), miss (it could not), new (no cookie yet).",
            routes
                .iter()
                .filter(|r| r.settings.cookie.is_some())
                .flat_map(|r| {
                    STICKY_LABELS
                        .iter()
                        .zip(r.stats.sticky.iter())
                        .map(move |(k, v)| (with(r, "decision", k), v.load(Relaxed)))
                }),
        )?;

        // Endpoints that served, failed or are out of rotation, each once.
        let mut seen = HashSet::new();
        let mut eps = Vec::new();
        for r in t.routes() {
            for mem in r.backends.members.iter() {
                let g = &r.backends.groups[mem.group as usize];
                let ep = &g.endpoints[mem.index as usize];
                let live = &mem.live;
                let s = &live.stats;
                let used = s.classes.iter().any(|c| c.load(Relaxed) > 0)
                    || s.failures.load(Relaxed) > 0
                    || live.active() > 0
                    || !live.is_available();
                if used && seen.insert(ep.clone()) {
                    eps.push((
                        [
                            ("namespace", g.service.0.to_string()),
                            ("service", g.service.1.to_string()),
                            ("endpoint", ep.to_string()),
                        ],
                        live.clone(),
                    ));
                }
            }
        }
        eps.sort_by(|a, b| a.0.cmp(&b.0));
        o.counters(
            "endpoint_requests",
            "Responses per endpoint by status class (across the routes that use it).",
            eps.iter().flat_map(|(l, live)| {
                crate::table::CLASS_LABELS
                    .iter()
                    .zip(live.stats.classes.iter())
                    .map(|(c, v)| {
                        let mut l: Vec<(&str, &str)> =
                            l.iter().map(|(k, v)| (*k, v.as_str())).collect();
                        l.push(("code", c));
                        (l, v.load(Relaxed))
                    })
            }),
        )?;
        let plain = endpoint_labels;
        o.counters(
            "endpoint_bytes_out",
            "Response body bytes sent to clients from each endpoint.",
            eps.iter()
                .map(|(l, live)| (plain(l), live.stats.bytes_out.load(Relaxed))),
        )?;
        o.gauges(
            "endpoint_active_requests",
            "Requests in flight to each endpoint.",
            eps.iter()
                .map(|(l, live)| (plain(l), i64::from(live.active()))),
        )?;
        o.counters(
            "endpoint_failures",
            "Failed connects and exchanges per endpoint.",
            eps.iter()
                .map(|(l, live)| (plain(l), live.stats.failures.load(Relaxed))),
        )?;
        o.counters(
            "endpoint_ejections",
            "Times passive health checking took each endpoint out of rotation.",
            eps.iter()
                .map(|(l, live)| (plain(l), live.stats.ejections.load(Relaxed))),
        )?;
        o.gauges(
            "endpoint_up",
            "1 when the endpoint takes new requests; 0 while ejected or marked down by active checks.",
            eps.iter()
                .map(|(l, live)| (plain(l), i64::from(live.is_available()))),
        )?;
        Ok(())
    }
}

fn route_labels(r: &crate::table::RouteEntry) -> Labels<'_> {
    vec![("namespace", &*r.namespace), ("route", &*r.name)]
}

fn with<'a>(r: &'a crate::table::RouteEntry, k: &'static str, v: &'static str) -> Labels<'a> {
    let mut l = route_labels(r);
    l.push((k, v));
    l
}

fn endpoint_labels<'a>(l: &'a [(&'static str, String); 3]) -> Labels<'a> {
    l.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// An empty label set.
struct NoLabels;

impl EncodeLabelSet for NoLabels {
    fn encode(&self, _: &mut prometheus_client::encoding::LabelSetEncoder<'_>) -> fmt::Result {
        Ok(())
    }
}

fn source(o: &mut Out<'_>, h: &crate::source::kube::SourceHealth) -> fmt::Result {
    let w = &crate::source::kube_status::WRITES;
    o.gauge(
        "source_synced",
        "1 once every kind has been listed from the API server.",
        i64::from(h.synced.load(Relaxed)),
    )?;
    o.gauge(
        "source_stale",
        "1 while a watch cannot reach the API server: the table is the last complete one.",
        i64::from(h.stale.load(Relaxed)),
    )?;
    o.counter(
        "source_watch_errors",
        "Watch errors (each retried with back-off).",
        h.errors.load(Relaxed),
    )?;
    o.counter(
        "source_relists",
        "Lists after the first (410 Gone, reconnects).",
        h.relists.load(Relaxed),
    )?;
    o.counter(
        "source_rejected_objects",
        "Objects from the API server that could not be decoded.",
        h.rejected_objects.load(Relaxed),
    )?;
    o.gauge(
        "source_last_event_timestamp_seconds",
        "Unix time of the last event from the API server.",
        h.last_event.load(Relaxed) as i64,
    )?;
    o.gauge(
        "source_initial_sync_seconds",
        "Time from start to the first complete view.",
        h.initial_sync_ms.load(Relaxed) as f64 / 1000.0,
    )?;
    o.counters(
        "status_writes",
        "Route and Ingress status writes by result.",
        [
            (vec![("result", "written")], w[0].load(Relaxed)),
            (vec![("result", "raced")], w[1].load(Relaxed)),
            (vec![("result", "failed")], w[2].load(Relaxed)),
        ],
    )
}
