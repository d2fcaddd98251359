//! Text to objects: multi-document YAML or JSON, one error per bad document
//! and the good ones kept.

use super::objects::*;
use serde::de::DeserializeOwned;

/// One object of a kind gatehouse reads.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // short-lived, moved once into an Arc
pub enum Object {
    Route(Route),
    Service(Service),
    Endpoints(Endpoints),
    EndpointSlice(EndpointSlice),
    Ingress(Ingress),
    IngressClass(IngressClass),
    Namespace(Namespace),
    Secret(Secret),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Route(_) => "Route",
            Object::Service(_) => "Service",
            Object::Endpoints(_) => "Endpoints",
            Object::EndpointSlice(_) => "EndpointSlice",
            Object::Ingress(_) => "Ingress",
            Object::IngressClass(_) => "IngressClass",
            Object::Namespace(_) => "Namespace",
            Object::Secret(_) => "Secret",
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Route(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::Endpoints(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Ingress(o) => &o.metadata,
            Object::IngressClass(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
        }
    }
}

/// Why a document was not loaded. `doc` counts from 1 within its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {doc}{}: {reason}", object.as_deref().map(|o| format!(" ({o})")).unwrap_or_default())]
pub struct DocError {
    pub doc: usize,
    /// `Kind namespace/name` when the document got that far.
    pub object: Option<String>,
    pub reason: String,
}

/// Parse a file's text. `json` picks the JSON parser; otherwise the text is
/// YAML with `---` separated documents. Empty documents are skipped,
/// `kind: List` is flattened.
pub fn parse_text(text: &str, json: bool) -> (Vec<Object>, Vec<DocError>) {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    let values: Vec<Result<serde_json::Value, String>> = if json {
        vec![serde_json::from_str(text).map_err(|e| e.to_string())]
    } else {
        // A YAML syntax error ends the stream: the parser cannot resync, and
        // its iterator would repeat the error forever.
        let mut out = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(text) {
            match <serde_yaml::Value as serde::Deserialize>::deserialize(doc) {
                Ok(v) => out.push(serde_json::to_value(v).map_err(|e| e.to_string())),
                Err(e) => {
                    out.push(Err(e.to_string()));
                    break;
                }
            }
        }
        out
    };
    for (i, value) in values.into_iter().enumerate() {
        let doc = i + 1;
        match value {
            Ok(v) => from_value(v, doc, &mut objects, &mut errors),
            Err(reason) => errors.push(DocError {
                doc,
                object: None,
                reason,
            }),
        }
    }
    (objects, errors)
}

/// One object from an already-decoded value (the API server's JSON).
pub fn object_from_value(v: serde_json::Value) -> Result<Object, DocError> {
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    from_value(v, 1, &mut out, &mut errors);
    match (out.pop(), errors.pop()) {
        (_, Some(e)) => Err(e),
        (Some(o), None) => Ok(o),
        (None, None) => Err(DocError {
            doc: 1,
            object: None,
            reason: "empty object".into(),
        }),
    }
}

fn from_value(v: serde_json::Value, doc: usize, out: &mut Vec<Object>, errors: &mut Vec<DocError>) {
    if v.is_null() {
        return; // an empty document between separators
    }
    let Some(map) = v.as_object() else {
        errors.push(DocError {
            doc,
            object: None,
            reason: "not a mapping".into(),
        });
        return;
    };
    let kind = map
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("")
        .to_owned();
    let api = map
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or("")
        .to_owned();
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("")
        .to_owned();
    let ns = map
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        .unwrap_or("default")
        .to_owned();
    let label = format!("{kind} {ns}/{name}");
    if kind == "List" || kind.ends_with("List") && map.contains_key("items") {
        if let Some(items) = map.get("items").and_then(|i| i.as_array()) {
            for item in items.clone() {
                from_value(item, doc, out, errors);
            }
        }
        return;
    }
    let err = |reason: String| DocError {
        doc,
        object: Some(label.clone()),
        reason,
    };
    if kind.is_empty() {
        errors.push(err("missing kind".into()));
        return;
    }
    if name.is_empty() {
        errors.push(err("missing metadata.name".into()));
        return;
    }
    let group = api.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    let expected = match kind.as_str() {
        "Route" => "route.openshift.io",
        "Ingress" | "IngressClass" => "networking.k8s.io",
        "EndpointSlice" => "discovery.k8s.io",
        "Service" | "Endpoints" | "Namespace" | "Secret" => "",
        other => {
            errors.push(err(format!(
                "unknown kind {other:?} (apiVersion {api:?}); ignored"
            )));
            return;
        }
    };
    if group != expected {
        errors.push(err(format!(
            "apiVersion {api:?} does not serve {kind}; expected group {:?}",
            if expected.is_empty() {
                "core (v1)"
            } else {
                expected
            }
        )));
        return;
    }
    let parsed = match kind.as_str() {
        "Route" => typed(v).map(Object::Route),
        "Service" => typed(v).map(Object::Service),
        "Endpoints" => typed(v).map(Object::Endpoints),
        "EndpointSlice" => typed(v).map(Object::EndpointSlice),
        "Ingress" => typed(v).map(Object::Ingress),
        "IngressClass" => typed(v).map(Object::IngressClass),
        "Namespace" => typed(v).map(Object::Namespace),
        _ => typed(v).map(Object::Secret),
    };
    match parsed {
        Ok(o) => out.push(o),
        Err(e) => errors.push(err(e)),
    }
}

fn typed<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_with_errors_keeps_the_good_ones() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
---
---
apiVersion: v1
kind: Gadget
metadata: {name: g}
---
apiVersion: route.openshift.io/v1
kind: Route
metadata: {name: r}
spec:
  host: a.example.com
  to: {kind: Service, name: web}
  port: {targetPort: http}
---
apiVersion: route.openshift.io/v1
kind: Route
metadata: {name: broken}
spec:
  to: "not a mapping"
---
kind: Service
metadata: {}
"#;
        let (objs, errs) = parse_text(text, false);
        assert_eq!(objs.len(), 2, "{objs:?}");
        assert_eq!(objs[0].kind(), "Service");
        let Object::Route(r) = &objs[1] else { panic!() };
        assert_eq!(r.metadata.ns(), "default");
        assert_eq!(
            r.spec.port.as_ref().unwrap().target_port,
            IntOrString::Str("http".into())
        );
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].reason.contains("unknown kind"));
        assert_eq!(errs[1].object.as_deref(), Some("Route default/broken"));
        assert!(errs[2].reason.contains("metadata.name"));
    }

    #[test]
    fn not_yaml_is_an_error_not_a_panic() {
        let (objs, errs) = parse_text("{{{{ : :\n\t- ]", false);
        assert!(objs.is_empty());
        assert_eq!(errs.len(), 1);
        let (objs, errs) = parse_text("[1, 2", true);
        assert!(objs.is_empty());
        assert_eq!(errs.len(), 1);
        let (_, errs) = parse_text("- 1\n- 2\n", false);
        assert_eq!(errs[0].reason, "not a mapping");
    }

    #[test]
    fn json_and_lists() {
        let text = r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a","labels":{"tier":"dmz"}}},
            {"apiVersion":"v1","kind":"Endpoints","metadata":{"name":"web","namespace":"a"},
             "subsets":[{"addresses":[{"ip":"127.0.0.1"}],"ports":[{"port":8080}]}]}]}"#;
        let (objs, errs) = parse_text(text, true);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(objs.len(), 2);
    }
}
