//! The desired state: every object a source has, keyed by namespace/name.
//!
//! Objects are `Arc`ed so a source can rebuild the store cheaply and the
//! compiler can tell what changed by pointer (unchanged objects keep their
//! `Arc`).

use super::objects::*;
use super::parse::Object;
use std::collections::BTreeSet;
use std::sync::Arc;

/// `(namespace, name)`; cluster-scoped kinds use an empty namespace.
pub type Key = (String, String);

/// A persistent ordered map: a copy shares every node, a change copies
/// only the path to it, and a diff skips what two versions share. A
/// snapshot with one route changed among 10k costs a few nodes, and
/// `change_from` finds it without visiting the rest.
pub type Kind<T> = imbl::OrdMap<Key, Arc<T>>;

/// All objects of the kinds gatehouse reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Objects {
    pub routes: Kind<Route>,
    pub services: Kind<Service>,
    pub endpoints: Kind<Endpoints>,
    pub endpoint_slices: Kind<EndpointSlice>,
    pub ingresses: Kind<Ingress>,
    pub ingress_classes: Kind<IngressClass>,
    pub namespaces: Kind<Namespace>,
    pub secrets: Kind<Secret>,
    /// `Kind namespace/name` → where the object came from (a file, for the
    /// manifests source), so problems can name it. Not compared by
    /// `change_from`.
    pub origins: imbl::OrdMap<String, Arc<str>>,
}

/// What differs between two stores, as far as compiling cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    None,
    /// Only Endpoints/EndpointSlices changed, for these services.
    EndpointsOnly(BTreeSet<Key>),
    /// Only Routes and Ingresses changed (every service, endpoint, secret
    /// and namespace is as it was): a compile scoped to the changed routes'
    /// hosts, or a full one that may reuse the previous table's entries of
    /// unchanged routes.
    RoutesOnly,
    /// Anything else: routes, services, ingresses, namespaces, secrets.
    Full,
}

impl Objects {
    /// Insert an object; true if one of the same kind and key was there.
    pub fn insert(&mut self, obj: Object) -> bool {
        self.put(obj, false)
    }

    /// Remove one object of a kind (`Object::kind()` names); true if it was
    /// there.
    pub fn remove(&mut self, kind: &str, key: &Key) -> bool {
        self.origins.remove(&format!("{kind} {}/{}", key.0, key.1));
        match kind {
            "Route" => self.routes.remove(key).is_some(),
            "Service" => self.services.remove(key).is_some(),
            "Endpoints" => self.endpoints.remove(key).is_some(),
            "EndpointSlice" => self.endpoint_slices.remove(key).is_some(),
            "Ingress" => self.ingresses.remove(key).is_some(),
            "IngressClass" => self.ingress_classes.remove(key).is_some(),
            "Namespace" => self.namespaces.remove(key).is_some(),
            "Secret" => self.secrets.remove(key).is_some(),
            _ => false,
        }
    }

    /// Keep only the objects of a kind whose key passes `keep`.
    pub fn retain(&mut self, kind: &str, mut keep: impl FnMut(&Key) -> bool) {
        fn retain<T>(m: &mut Kind<T>, keep: &mut impl FnMut(&Key) -> bool) {
            let gone: Vec<Key> = m.keys().filter(|k| !keep(k)).cloned().collect();
            for k in &gone {
                m.remove(k);
            }
        }
        let keep = &mut keep;
        match kind {
            "Route" => retain(&mut self.routes, keep),
            "Service" => retain(&mut self.services, keep),
            "Endpoints" => retain(&mut self.endpoints, keep),
            "EndpointSlice" => retain(&mut self.endpoint_slices, keep),
            "Ingress" => retain(&mut self.ingresses, keep),
            "IngressClass" => retain(&mut self.ingress_classes, keep),
            "Namespace" => retain(&mut self.namespaces, keep),
            "Secret" => retain(&mut self.secrets, keep),
            _ => {}
        }
    }

    /// Insert unless an equal object is already there (then the old `Arc`
    /// stays, so `change_from` sees no change by pointer). True if inserted.
    pub fn insert_if_changed(&mut self, obj: Object) -> bool {
        self.put(obj, true)
    }

    /// The one dispatch over kinds for both inserts. Returns, for a plain
    /// insert, whether the key was there; with `keep_equal`, whether the
    /// object was stored.
    fn put(&mut self, obj: Object, keep_equal: bool) -> bool {
        fn put<T: PartialEq>(m: &mut Kind<T>, key: Key, v: T, keep_equal: bool) -> bool {
            if keep_equal {
                if m.get(&key).is_some_and(|old| **old == v) {
                    return false;
                }
                m.insert(key, Arc::new(v));
                return true;
            }
            m.insert(key, Arc::new(v)).is_some()
        }
        let key = Self::key_of(&obj);
        let k = keep_equal;
        match obj {
            Object::Route(o) => put(&mut self.routes, key, o, k),
            Object::Service(o) => put(&mut self.services, key, o, k),
            Object::Endpoints(o) => put(&mut self.endpoints, key, o, k),
            Object::EndpointSlice(o) => put(&mut self.endpoint_slices, key, o, k),
            Object::Ingress(o) => put(&mut self.ingresses, key, o, k),
            Object::IngressClass(o) => put(&mut self.ingress_classes, key, o, k),
            Object::Namespace(o) => put(&mut self.namespaces, key, o, k),
            Object::Secret(o) => put(&mut self.secrets, key, o, k),
        }
    }

    /// The store key of an object: cluster-scoped kinds have no namespace.
    pub fn key_of(obj: &Object) -> Key {
        let m = obj.meta();
        let cluster_scoped = matches!(obj, Object::Namespace(_) | Object::IngressClass(_));
        (
            if cluster_scoped {
                String::new()
            } else {
                m.ns().to_owned()
            },
            m.name.clone(),
        )
    }

    /// Look up by namespace and name without building a key per call site.
    pub fn get<'a, T>(m: &'a Kind<T>, ns: &str, name: &str) -> Option<&'a Arc<T>> {
        m.get(&(ns.to_owned(), name.to_owned()))
    }

    /// Number of objects of all kinds.
    pub fn len(&self) -> usize {
        self.routes.len()
            + self.services.len()
            + self.endpoints.len()
            + self.endpoint_slices.len()
            + self.ingresses.len()
            + self.ingress_classes.len()
            + self.namespaces.len()
            + self.secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What changed from `old` to `self`. Cheap when objects are shared:
    /// `Arc<T: Eq>` compares by pointer first.
    pub fn change_from(&self, old: &Objects) -> Change {
        if self.services != old.services
            || self.ingress_classes != old.ingress_classes
            || self.namespaces != old.namespaces
            || self.secrets != old.secrets
        {
            return Change::Full;
        }
        if self.routes != old.routes || self.ingresses != old.ingresses {
            return if self.endpoints == old.endpoints && self.endpoint_slices == old.endpoint_slices
            {
                Change::RoutesOnly
            } else {
                Change::Full
            };
        }
        let mut services = BTreeSet::new();
        diff_keys(&self.endpoints, &old.endpoints, |k| {
            services.insert(k.clone());
        });
        let slice_service = |m: &Kind<EndpointSlice>, k: &Key| {
            m.get(k)
                .and_then(|s| s.service_name().map(|n| (k.0.clone(), n.to_owned())))
        };
        diff_keys(&self.endpoint_slices, &old.endpoint_slices, |k| {
            services.extend(slice_service(&self.endpoint_slices, k));
            services.extend(slice_service(&old.endpoint_slices, k));
        });
        if services.is_empty() {
            Change::None
        } else {
            Change::EndpointsOnly(services)
        }
    }
}

/// Calls `f`, in key order, for every key present in one map only or with
/// differing values. Nodes the two maps share are skipped unvisited;
/// unchanged values compare by pointer.
pub(crate) fn diff_keys<T: PartialEq>(a: &Kind<T>, b: &Kind<T>, mut f: impl FnMut(&Key)) {
    use imbl::ordmap::DiffItem;
    for d in b.diff(a) {
        match d {
            DiffItem::Add(k, _) | DiffItem::Remove(k, _) => f(k),
            DiffItem::Update { new: (k, _), .. } => f(k),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse::parse_text;

    fn store(text: &str) -> Objects {
        let (objs, errs) = parse_text(text, false);
        assert!(errs.is_empty(), "{errs:?}");
        let mut s = Objects::default();
        for o in objs {
            s.insert(o);
        }
        s
    }

    #[test]
    fn endpoint_only_changes_are_told_apart() {
        let base = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n---\n";
        let a = store(&format!("{base}apiVersion: v1\nkind: Endpoints\nmetadata: {{name: web}}\nsubsets: [{{addresses: [{{ip: 10.0.0.1}}], ports: [{{port: 80}}]}}]\n"));
        let b = store(&format!("{base}apiVersion: v1\nkind: Endpoints\nmetadata: {{name: web}}\nsubsets: [{{addresses: [{{ip: 10.0.0.2}}], ports: [{{port: 80}}]}}]\n"));
        assert_eq!(a.change_from(&a.clone()), Change::None);
        let Change::EndpointsOnly(s) = b.change_from(&a) else {
            panic!()
        };
        assert_eq!(
            s.into_iter().collect::<Vec<_>>(),
            vec![("default".into(), "web".into())]
        );
        let c = store(base);
        assert!(matches!(c.change_from(&a), Change::EndpointsOnly(_)));
        let d = store("apiVersion: v1\nkind: Service\nmetadata: {name: web2}\n");
        assert_eq!(d.change_from(&c), Change::Full);
    }

    #[test]
    fn slices_map_to_their_service() {
        let a = store("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-abc, namespace: n, labels: {kubernetes.io/service-name: web}}\nendpoints: []\n");
        let Change::EndpointsOnly(s) = a.change_from(&Objects::default()) else {
            panic!()
        };
        assert!(s.contains(&("n".to_owned(), "web".to_owned())));
    }
}
