//! Service → ready endpoints, the way Kubernetes resolves them: EndpointSlices
//! when the service has any, else Endpoints; only ready addresses; the
//! route's `targetPort` picks endpoint ports by name or number.

use crate::model::{EndpointPort, EndpointSlice, IntOrString, Key, Objects, Service};
use crate::table::{Endpoint, UpstreamProtocol};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// EndpointSlices grouped by the service they belong to.
pub struct SliceIndex<'a> {
    by_service: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
}

impl<'a> SliceIndex<'a> {
    pub fn new(objs: &'a Objects) -> Self {
        Self::build(objs, |_| true)
    }

    fn build(objs: &'a Objects, keep: impl Fn((&str, &str)) -> bool) -> Self {
        let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for ((ns, _), s) in &objs.endpoint_slices {
            if let Some(svc) = s.service_name() {
                if keep((ns, svc)) {
                    by_service.entry((ns.as_str(), svc)).or_default().push(s);
                }
            }
        }
        SliceIndex { by_service }
    }
}

/// The endpoints of one service for one route.
#[derive(Debug, Default)]
pub struct Resolved {
    pub endpoints: Vec<Endpoint>,
    pub protocol: UpstreamProtocol,
    /// Oddities worth a log line (unparseable addresses, unknown ports).
    pub problems: Vec<String>,
}

/// Resolve a service; `None` when the Service does not exist.
pub fn resolve(
    objs: &Objects,
    slices: &SliceIndex<'_>,
    service: &Key,
    port: Option<&IntOrString>,
    allow_local: bool,
) -> Option<Resolved> {
    let svc = objs.services.get(service)?;
    if svc.spec.type_.as_deref() == Some("ExternalName") {
        return Some(external_name(svc, port, allow_local));
    }
    let mut out = Resolved::default();
    let mut protocol = None;
    let mut add = |ips: &mut dyn Iterator<Item = &str>,
                   ports: &[EndpointPort],
                   out: &mut Resolved| {
        let selected: Vec<&EndpointPort> = ports
            .iter()
            .filter(|p| port_selected(svc, p, port))
            .collect();
        for ip in ips {
            let Ok(ip) = ip.parse::<IpAddr>() else {
                out.problems.push(format!(
                    "endpoint address {ip:?} of service {} is not an IP; skipped",
                    service.1
                ));
                continue;
            };
            if !allow_local && is_node_local(ip) {
                out.problems.push(format!(
                        "endpoint address {ip} of service {} is loopback, link-local, multicast or a cloud metadata address; dropped",
                        service.1
                    ));
                continue;
            }
            for p in &selected {
                let Ok(num) = u16::try_from(p.port) else {
                    continue;
                };
                if num == 0 {
                    continue;
                }
                protocol.get_or_insert_with(|| protocol_of(svc, p));
                out.endpoints
                    .push(Endpoint::Socket(SocketAddr::new(ip, num)));
            }
        }
    };
    match slices
        .by_service
        .get(&(service.0.as_str(), service.1.as_str()))
    {
        Some(list) => {
            for s in list {
                if !matches!(
                    s.address_type.as_deref(),
                    None | Some("IPv4") | Some("IPv6")
                ) {
                    continue; // FQDN slices are not routable by IP
                }
                for e in &s.endpoints {
                    if e.conditions.ready == Some(false) {
                        continue;
                    }
                    add(
                        &mut e.addresses.iter().map(String::as_str),
                        &s.ports,
                        &mut out,
                    );
                }
            }
        }
        None => {
            if let Some(eps) = objs.endpoints.get(service) {
                for subset in &eps.subsets {
                    add(
                        &mut subset.addresses.iter().map(|a| a.ip.as_str()),
                        &subset.ports,
                        &mut out,
                    );
                }
            }
        }
    }
    out.endpoints.sort();
    out.endpoints.dedup();
    out.protocol = protocol.unwrap_or_default();
    if let (Some(want), true) = (port, out.endpoints.is_empty()) {
        if !svc
            .spec
            .ports
            .iter()
            .any(|p| service_port_matches(p.name.as_deref(), p.port, p.target_port.as_ref(), want))
        {
            out.problems.push(format!(
                "targetPort {want} matches no port of service {}",
                service.1
            ));
        }
    }
    Some(out)
}

/// Does endpoint port `p` serve the route's `targetPort`? A name matches the
/// endpoint port's name (the Service port's name); a number matches the
/// endpoint port number, or a Service port number whose endpoint port this is.
fn port_selected(svc: &Service, p: &EndpointPort, want: Option<&IntOrString>) -> bool {
    match want {
        None => true,
        Some(IntOrString::Str(n)) => {
            p.name.as_deref() == Some(n.as_str()) || n.parse::<i64>().ok() == Some(p.port)
        }
        Some(IntOrString::Int(n)) => {
            p.port == *n
                || svc.spec.ports.iter().any(|sp| {
                    sp.port == *n
                        && sp.name.as_deref().unwrap_or("") == p.name.as_deref().unwrap_or("")
                })
        }
    }
}

fn service_port_matches(
    name: Option<&str>,
    port: i64,
    target: Option<&IntOrString>,
    want: &IntOrString,
) -> bool {
    match want {
        IntOrString::Str(n) => name == Some(n.as_str()) || target == Some(want),
        IntOrString::Int(n) => port == *n || target == Some(want),
    }
}

fn is_h2c(app: Option<&str>) -> bool {
    matches!(app, Some("h2c" | "kubernetes.io/h2c"))
}

fn protocol_of(svc: &Service, p: &EndpointPort) -> UpstreamProtocol {
    let service_port = svc.spec.ports.iter().find(|sp| sp.name == p.name);
    if is_h2c(p.app_protocol.as_deref())
        || is_h2c(service_port.and_then(|sp| sp.app_protocol.as_deref()))
    {
        UpstreamProtocol::H2c
    } else {
        UpstreamProtocol::Http1
    }
}

fn external_name(svc: &Service, want: Option<&IntOrString>, allow_local: bool) -> Resolved {
    let mut out = Resolved::default();
    let Some(host) = svc
        .spec
        .external_name
        .as_deref()
        .map(str::trim)
        .filter(|h| !h.is_empty())
    else {
        out.problems.push(format!(
            "ExternalName service {} has no externalName",
            svc.metadata.name
        ));
        return out;
    };
    let sp =
        match want {
            Some(w) => svc.spec.ports.iter().find(|p| {
                service_port_matches(p.name.as_deref(), p.port, p.target_port.as_ref(), w)
            }),
            None => svc.spec.ports.first(),
        };
    let port = match (want, sp) {
        (_, Some(p)) => match &p.target_port {
            Some(IntOrString::Int(t)) => *t,
            _ => p.port,
        },
        (Some(IntOrString::Int(n)), None) => *n,
        _ => 80,
    };
    let Ok(port) = u16::try_from(port) else {
        out.problems.push(format!(
            "port {port} of service {} is out of range",
            svc.metadata.name
        ));
        return out;
    };
    out.protocol = sp
        .map(|p| {
            if is_h2c(p.app_protocol.as_deref()) {
                UpstreamProtocol::H2c
            } else {
                UpstreamProtocol::Http1
            }
        })
        .unwrap_or_default();
    let host = host.trim_end_matches('.');
    out.endpoints.push(match host.parse::<IpAddr>() {
        Ok(ip) if !allow_local && is_node_local(ip) => {
            out.problems.push(format!(
                "endpoint address {ip} of service {} is loopback, link-local, multicast or a cloud metadata address; dropped",
                svc.metadata.name
            ));
            return out;
        }
        Ok(ip) => Endpoint::Socket(SocketAddr::new(ip, port)),
        Err(_) => Endpoint::Dns {
            host: Arc::from(host),
            port,
            public_only: !allow_local,
        },
    });
    out
}

/// Addresses a tenant's endpoints must never point at, as the OpenShift
/// router's extended validation drops them: the node itself (loopback,
/// unspecified), link-local (which holds most cloud metadata services),
/// multicast, and the metadata addresses outside link-local.
pub fn is_node_local(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4 == std::net::Ipv4Addr::new(168, 63, 129, 16) // Azure wireserver
                || v4 == std::net::Ipv4Addr::new(100, 100, 100, 200) // Alibaba metadata
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_multicast()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link-local
                || v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
            // AWS IMDS
        }
    }
}
